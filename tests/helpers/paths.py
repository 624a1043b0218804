"""Where the repository's files are, so tests do not count `.parent`s from their own location."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TEST_DATA = REPO / "tests" / "data"
