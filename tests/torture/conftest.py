"""The torture suite's fixtures."""

import os

import pytest

from tests.helpers.daemon import installed_cli


@pytest.fixture(scope="module")
def audit_cli_path() -> str:
    """The installed console script, for module-scoped fixtures (tests/conftest's audit_cli is per test)."""
    exe = installed_cli()
    if exe is None:
        pytest.fail("audit-otlp is not installed: pip install '.[test]'")
    return exe


def pytest_configure(config: pytest.Config) -> None:
    # Long mode fuzzes 20x harder (test_fuzz reads this when it is imported, after this hook).
    if config.getoption("--runslow", default=False):
        os.environ.setdefault("TORTURE_FUZZ_EXAMPLES", "1600")
