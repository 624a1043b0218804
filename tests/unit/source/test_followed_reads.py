"""FollowedFile.read_chunk through aiofiles: it reads at read_offset of the fd it holds, whatever
moved the fd's own offset (an earlier read, a jump, another FollowedFile on the same fd) and
whatever happened to the file's name since it was opened."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audit_otlp.source.followed import FollowedFile, open_followed

pytestmark = pytest.mark.timeout(60)

MAX_LINE = 1 << 20


def rows(count: int, first: int = 0) -> bytes:
    return b"".join(b'{"row":%d,"pad":"%s"}\n' % (i, b"x" * (i % 50)) for i in range(first, first + count))


async def read_to_end(followed: FollowedFile, max_bytes: int = 4096) -> bytes:
    out = b""
    while data := await followed.read_chunk(max_bytes):
        followed.accept(data)
        out += data
    return out


async def test_reads_follow_read_offset_across_jumps_back_and_forward(tmp_path: Path) -> None:
    content = rows(500)
    (tmp_path / "audit.jsonl").write_bytes(content)
    followed = open_followed(tmp_path / "audit.jsonl", MAX_LINE)
    try:
        assert await read_to_end(followed) == content  # the fd's offset is now at the end
        back = content.index(b"\n", 1000) + 1
        followed.position_at(back)
        assert await followed.read_chunk(100) == content[back : back + 100]
        forward = content.index(b"\n", 9000) + 1
        followed.position_at(forward)  # a jump past where the fd's offset stands (back + 100)
        assert await read_to_end(followed) == content[forward:]
        assert followed.read_offset == len(content)
        assert await followed.read_chunk() == b""  # at the end of the file
    finally:
        followed.close()


async def test_a_read_ignores_whatever_else_moved_the_fds_offset(tmp_path: Path) -> None:
    content = rows(200)
    (tmp_path / "audit.jsonl").write_bytes(content)
    followed = open_followed(tmp_path / "audit.jsonl", MAX_LINE)
    try:
        followed.accept(await followed.read_chunk(700))
        os.lseek(followed.fd, 3, os.SEEK_SET)  # nothing in the daemon does this; a read still must not care
        assert await followed.read_chunk(50) == content[700:750]
        followed.read_offset = 10  # assigned directly, as a truncation's copy takes over an offset
        assert await followed.read_chunk(50) == content[10:60]
    finally:
        followed.close()


async def test_a_followed_file_taking_over_the_fd_reads_from_its_own_offset(tmp_path: Path) -> None:
    """changes.truncated hands the fd of a truncated file to a fresh FollowedFile at offset 0."""
    content = rows(100)
    (tmp_path / "audit.jsonl").write_bytes(content)
    old = open_followed(tmp_path / "audit.jsonl", MAX_LINE)
    try:
        assert await read_to_end(old) == content
        fresh = FollowedFile(old.path, old.fd, old.identity, old.splitter, 0)
        assert await fresh.read_chunk(64) == content[:64]
    finally:
        old.close()


async def test_a_file_renamed_then_unlinked_while_open_is_still_read_from_its_fd(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    content = rows(300)
    path.write_bytes(content)
    followed = open_followed(path, MAX_LINE)
    try:
        followed.accept(await followed.read_chunk(1000))
        path.rename(tmp_path / "audit.jsonl.1")
        path.write_bytes(rows(10, first=10_000))  # a new file at the name: never read through it
        assert await followed.read_chunk(1000) == content[1000:2000]
        followed.accept(content[1000:2000])
        os.unlink(tmp_path / "audit.jsonl.1")
        assert await read_to_end(followed) == content[2000:]
        assert followed.unchanged()
    finally:
        followed.close()


async def test_a_read_of_a_closed_followed_file_raises_oserror(tmp_path: Path) -> None:
    (tmp_path / "audit.jsonl").write_bytes(rows(10))
    followed = open_followed(tmp_path / "audit.jsonl", MAX_LINE)
    await followed.read_chunk(10)
    followed.close()
    with pytest.raises(OSError):
        await followed.read_chunk()


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.sampled_from(["read", "jump", "foreign seek"]), st.integers(0, 12_000), st.integers(1, 5000)),
        min_size=1,
        max_size=25,
    )
)
def test_every_read_returns_the_bytes_pread_would(
    tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[str, int, int]]
) -> None:
    path = tmp_path_factory.mktemp("reads") / "audit.jsonl"
    content = rows(300)
    path.write_bytes(content)

    async def run() -> None:
        followed = open_followed(path, MAX_LINE)
        try:
            for action, offset, size in steps:
                if action == "jump":
                    followed.read_offset = min(offset, len(content))
                elif action == "foreign seek":
                    os.lseek(followed.fd, offset, os.SEEK_SET)
                else:
                    expected = os.pread(followed.fd, size, followed.read_offset)
                    data = await followed.read_chunk(size)
                    assert data == expected
                    followed.read_offset += len(data)
        finally:
            followed.close()

    asyncio.run(run())
