"""Which audit logs to follow: `source.paths` (paths and globs) made into a list of files.

A plain path is followed whether it exists yet or not (the tailer waits for it); a glob names the
files matching it now, rotated copies and temporary files left out (those belong to the file they
were rotated from). Each file is one source: its own hash chain, position, rotation state and
checkpoint entry (keyed by the path as it is named here).
"""

from __future__ import annotations

import glob
from pathlib import Path

from audit_otlp.source.siblings import _NUMBER, COMPRESSED, NOT_ROTATED


def expand(patterns: list[str]) -> list[Path]:
    """The files `patterns` name now, in order, each once."""
    found: dict[Path, None] = {}
    for pattern in patterns:
        if not glob.has_magic(pattern):
            found[Path(pattern)] = None
            continue
        for name in sorted(glob.glob(pattern)):
            if name.endswith(COMPRESSED + NOT_ROTATED) or _NUMBER.search(name) or not Path(name).is_file():
                continue
            found[Path(name)] = None
    return list(found)


def several(patterns: list[str], paths: list[Path]) -> bool:
    """Several audit logs (or a glob, which may match more later): each span then names its
    source, and each file's rotated copies are `<file>.*`."""
    return len(patterns) > 1 or len(paths) > 1 or any(glob.has_magic(p) for p in patterns)


def rotated_glob_for(path: Path | str, is_several: bool, configured: str) -> str:
    """Where `path`'s rotated copies are looked for: source.rotated_glob with one audit log."""
    return f"{path}.*" if is_several else configured
