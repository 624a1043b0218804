"""The e2e tests import the shared helpers from tests/ (put on sys.path by tests/conftest.py)."""
