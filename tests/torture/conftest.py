import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import os
import shutil

import pytest


@pytest.fixture(scope="module")
def audit_cli_path() -> str:
    """The installed console script, for module-scoped fixtures (tests/conftest's audit_cli is per test)."""
    exe = shutil.which("audit-otlp", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if exe is None:
        pytest.fail("audit-otlp is not installed: pip install '.[test]'")
    return exe
