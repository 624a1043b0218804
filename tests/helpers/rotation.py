"""The one rotation helper: rotate a file the ways the field does (logrotate create and copytruncate, the producer's tail rewrite, delete)."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

STYLES = ("rename", "tail_rewrite", "copytruncate")


def _shift(path: Path) -> None:
    """logrotate's numbering: audit.jsonl.N -> .N+1, newest first."""
    numbers = sorted(
        (
            int(m.group(1))
            for p in path.parent.glob(path.name + ".*")
            if (m := re.fullmatch(re.escape(path.name) + r"\.(\d+)", p.name))
        ),
        reverse=True,
    )
    for n in numbers:
        os.rename(f"{path}.{n}", f"{path}.{n + 1}")


def rotate(path: Path, style: str, keep_lines: int = 1000) -> None:
    if style == "rename":  # logrotate create
        _shift(path)
        if path.exists():
            os.rename(path, f"{path}.1")
        path.touch()
    elif style == "tail_rewrite":  # the producer: tail -n 1000 audit.jsonl > audit.jsonl.tmp && mv
        data = path.read_bytes() if path.exists() else b""
        lines = data.splitlines(keepends=True)[-keep_lines:]
        tmp = Path(f"{path}.tmp")
        tmp.write_bytes(b"".join(lines))
        os.rename(tmp, path)
    elif style == "copytruncate":  # logrotate copytruncate
        _shift(path)
        shutil.copyfile(path, f"{path}.1")
        os.truncate(path, 0)
    elif style == "delete":  # delete and recreate
        path.unlink()
        path.touch()
    else:
        raise ValueError(style)
