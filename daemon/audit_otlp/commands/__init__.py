"""One module per command of the CLI (`run`, `export`, `status`, `verify`, `check-config`,
`health`), each with `main(args, config) -> exit code`."""

from audit_otlp.commands import check_config, export, health, run, status, verify

__all__ = ["check_config", "export", "health", "run", "status", "verify"]
