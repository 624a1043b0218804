"""Shared test machinery: the real collector, the daemon as a subprocess, rotations, waits and
audit-row generators. Imported as `tests.helpers.<module>`."""
