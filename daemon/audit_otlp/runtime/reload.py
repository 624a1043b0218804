"""SIGHUP: read the configuration again and sort what changed into what can be applied to the
running daemon (keys marked reloadable in config.KEYS: log level and format, batch and retry
settings) and what only takes effect after a restart. Pure: the app applies the result."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from audit_otlp.config import KEYS_BY_NAME, Config, ConfigError


@dataclass(frozen=True)
class ReloadPlan:
    config: Config  # the configuration to run with from now on (old values for restart-only keys)
    applied: dict[str, tuple[Any, Any]]  # key -> (old, new), masked for display
    needs_restart: dict[str, tuple[Any, Any]]

    def describe(self) -> str:
        def show(changes: dict[str, tuple[Any, Any]]) -> str:
            return ", ".join(f"{k} ({old!r} -> {new!r})" for k, (old, new) in sorted(changes.items()))

        parts = []
        parts.append(f"applied {show(self.applied)}" if self.applied else "no reloadable key changed")
        if self.needs_restart:
            parts.append(f"these changed keys need a restart to take effect: {show(self.needs_restart)}")
        return "; ".join(parts)


def plan_reload(current: Config, fresh: Config) -> ReloadPlan:
    """Compare two configurations; secrets are compared as values but only shown masked."""
    old_masked, new_masked = current.masked(), fresh.masked()
    applied: dict[str, tuple[Any, Any]] = {}
    needs_restart: dict[str, tuple[Any, Any]] = {}
    keep: dict[str, Any] = {}
    for name, value in fresh.values.items():
        if value == current.values.get(name):
            continue
        shown = (old_masked.get(name), new_masked.get(name))
        key = KEYS_BY_NAME.get(name)
        if key is not None and key.reloadable:
            applied[name] = shown
        else:
            needs_restart[name] = shown
            keep[name] = current.values.get(name)
    if fresh.chain_key != current.chain_key:
        needs_restart["chain.key"] = ("***", "***")
    if (fresh.vendor and fresh.vendor.name) != (current.vendor and current.vendor.name) or fresh.secrets != current.secrets:
        needs_restart.setdefault("credentials", ("***", "***"))
    values = dict(fresh.values)
    values.update(keep)
    origin = dict(fresh.origin)
    origin.update({k: current.origin[k] for k in keep if k in current.origin})
    config = Config(values, origin, current.chain_key, current.vendor, current.secrets, current.config_file)
    return ReloadPlan(config, applied, needs_restart)


def reload_config(current: Config, load: Callable[[], Config]) -> ReloadPlan | str:
    """A plan, or the reason the new configuration was refused (the old one stays in force)."""
    try:
        fresh = load()
    except ConfigError as exc:
        return str(exc)
    return plan_reload(current, fresh)
