"""The torture suite's fixtures; `harness` is importable from the tests as a top-level module."""

import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="module")
def audit_cli_path() -> str:
    """The installed console script, for module-scoped fixtures (tests/conftest's audit_cli is per test)."""
    exe = shutil.which("audit-otlp", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if exe is None:
        pytest.fail("audit-otlp is not installed: pip install '.[test]'")
    return exe


def pytest_configure(config: pytest.Config) -> None:
    # Long mode fuzzes 20x harder (test_fuzz reads this when it is imported, after this hook).
    if config.getoption("--runslow", default=False):
        os.environ.setdefault("TORTURE_FUZZ_EXAMPLES", "1600")
