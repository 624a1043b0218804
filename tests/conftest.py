from __future__ import annotations

import pytest

from tests.helpers.daemon import installed_cli


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False, help="run long torture tests too")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="long run: use --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def audit_cli() -> str:
    """The installed console script (end-to-end tests run it as a subprocess)."""
    exe = installed_cli()
    if exe is None:
        pytest.fail("audit-otlp is not installed: pip install '.[test]'")
    return exe
