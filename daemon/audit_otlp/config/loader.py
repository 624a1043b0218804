"""Turn defaults, a TOML file, the environment and command-line options into one typed Config.

Precedence: option > environment > file > default. What each key accepts is declared once in
`keys.KEYS`; this module only layers the sources and derives the values that depend on others
(the endpoint from the OTel variables or a vendor preset, paths beside the checkpoint, the
chain key, the secrets to redact)."""

from __future__ import annotations

import glob
import os
import tomllib
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from audit_otlp.config.chain_key import ChainKeyError, find_chain_key
from audit_otlp.config.keys import DEFAULT_ENDPOINT, KEYS, KEYS_BY_NAME, OPTION_KEYS, ConfigError, Key
from audit_otlp.config.model import Config
from audit_otlp.delivery import vendors


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        # Tables that are values in their own right (headers, attributes) are kept whole.
        if isinstance(value, dict) and name not in ("export.headers", "resource.attributes"):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _apply(key: Key, raw: Any, where: str, from_env: bool = False) -> Any:
    parser = key.env_parse if (from_env and key.env_parse) else key.parse
    try:
        return parser(raw)
    except ValueError as exc:
        shown = "***" if key.secret else repr(raw)
        raise ConfigError(f"{where}: invalid value {shown} for {key.name}; accepted: {exc}") from None


def default_checkpoint_path(env: Mapping[str, str]) -> Path:
    state_dir = env.get("STATE_DIRECTORY")
    if state_dir:
        # systemd may pass several colon-separated directories; the first is ours.
        return Path(state_dir.split(":")[0]) / "checkpoint.json"
    return Path("state/audit-otlp.checkpoint.json")


def load_config(
    config_path: str | os.PathLike[str] | None = None,
    options: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> Config:
    """Build the effective configuration. Raises ConfigError (exit 2) on any invalid input."""
    env = dict(os.environ if env is None else env)
    env = {k: v for k, v in env.items() if v != ""}  # an empty variable counts as unset (OTel spec)
    options = {k: v for k, v in (options or {}).items() if v is not None}

    file_values: dict[str, Any] = {}
    if config_path is None and env.get("AUDIT_OTLP_CONFIG"):
        config_path = env["AUDIT_OTLP_CONFIG"]
    config_file = Path(config_path) if config_path else None
    if config_file is not None:
        try:
            with open(config_file, "rb") as fh:
                file_values = _flatten(tomllib.load(fh))
        except FileNotFoundError:
            raise ConfigError(f"--config: file not found: {config_file}") from None
        except PermissionError:
            raise ConfigError(f"--config: not readable: {config_file}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{config_file}: not valid TOML: {exc}") from None
        unknown = sorted(set(file_values) - set(KEYS_BY_NAME) - {"chain.key"})
        if unknown:
            raise ConfigError(f"{config_file}: unknown key {unknown[0]!r}; accepted keys: " + ", ".join(KEYS_BY_NAME))
        if "chain.key" in file_values:
            raise ConfigError(
                f"{config_file}: chain.key may not be written in the config file; "
                "accepted: chain.key_file or the AUDIT_OTLP_CHAIN_KEY environment variable"
            )

    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for key in KEYS:
        value, where = key.default, "default"
        if key.name in file_values:
            value, where = _apply(key, file_values[key.name], str(config_file)), "file"
        env_name = next((e for e in key.env if e in env), None)
        if env_name is not None:
            value, where = _apply(key, env[env_name], env_name, from_env=True), f"env:{env_name}"
        option = next((o for o, k in OPTION_KEYS.items() if k == key.name and o in options), None)
        if option is not None:
            value, where = _apply(key, options[option], "--" + option.replace("_", "-")), "option"
        values[key.name] = value
        origin[key.name] = where

    # Header variables: the traces-specific one overrides entries of the general one.
    if "OTEL_EXPORTER_OTLP_HEADERS" in env and "OTEL_EXPORTER_OTLP_TRACES_HEADERS" in env:
        merged = _apply(KEYS_BY_NAME["export.headers"], env["OTEL_EXPORTER_OTLP_HEADERS"], "OTEL_EXPORTER_OTLP_HEADERS", True)
        merged.update(values["export.headers"])
        values["export.headers"] = merged

    # Endpoint: option > file > OTEL traces endpoint (as is) > OTEL base + /v1/traces > vendor > default.
    explicit_endpoint = origin["export.endpoint"] != "default"
    if not explicit_endpoint and "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" in env:
        values["export.endpoint"] = _apply(
            KEYS_BY_NAME["export.endpoint"], env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"], "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", True
        )
        origin["export.endpoint"] = "env:OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
        explicit_endpoint = True
    elif not explicit_endpoint and "OTEL_EXPORTER_OTLP_ENDPOINT" in env:
        base = env["OTEL_EXPORTER_OTLP_ENDPOINT"].strip()
        values["export.endpoint"] = _apply(
            KEYS_BY_NAME["export.endpoint"], base.rstrip("/") + "/v1/traces", "OTEL_EXPORTER_OTLP_ENDPOINT", True
        )
        origin["export.endpoint"] = "env:OTEL_EXPORTER_OTLP_ENDPOINT"
        explicit_endpoint = True

    try:
        vendor = vendors.resolve(env, values["export.endpoint"] if explicit_endpoint else None)
        vendor_secrets = [secret for preset in vendors.presets(env) for secret in preset.secrets]
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if vendor is not None and not explicit_endpoint:
        values["export.endpoint"] = vendor.endpoint
        origin["export.endpoint"] = f"env:{vendor.env_name}"
    if values["export.endpoint"] is None:
        values["export.endpoint"] = DEFAULT_ENDPOINT

    # One audit log (--file, AUDIT_OTLP_FILE or source.path) unless source.paths lists several;
    # an explicit --file or AUDIT_OTLP_FILE wins over the file's source.paths (option > env > file).
    if values["source.paths"] is None or origin["source.path"] == "option" or origin["source.path"].startswith("env"):
        values["source.paths"] = [str(values["source.path"])]
        origin["source.paths"] = origin["source.path"]
    elif origin["source.path"] == "default":
        values["source.path"] = Path(values["source.paths"][0])
    several = len(values["source.paths"]) > 1 or any(glob.has_magic(p) for p in values["source.paths"])
    if several and values["source.rotated_glob"] is not None:
        raise ConfigError(
            "source.rotated_glob: cannot be used with several source.paths; accepted: leave it unset "
            "(each file's rotated copies are looked for as <path>.*)"
        )
    if values["source.rotated_glob"] is None:
        values["source.rotated_glob"] = str(values["source.path"]) + ".*"
    if values["checkpoint.path"] is None:
        values["checkpoint.path"] = default_checkpoint_path(env)
        origin["checkpoint.path"] = "env:STATE_DIRECTORY" if env.get("STATE_DIRECTORY") else "default"
    if values["dead_letter.path"] is None:
        values["dead_letter.path"] = values["checkpoint.path"].parent / "dead-letter.jsonl"
    if values["retry.max_backoff"] < values["retry.initial_backoff"]:
        raise ConfigError(
            "retry.max_backoff: must be at least retry.initial_backoff "
            f"({values['retry.initial_backoff']} s); accepted: a duration >= retry.initial_backoff"
        )
    if values["retry.initial_backoff"] <= 0:
        raise ConfigError('retry.initial_backoff: must be greater than 0; accepted: a positive duration such as "500ms"')
    if (values["export.client_certificate"] is None) != (values["export.client_key"] is None):
        raise ConfigError(
            "export.client_certificate / export.client_key: give both or neither "
            "(OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and OTEL_EXPORTER_OTLP_CLIENT_KEY)"
        )

    try:
        found_key = find_chain_key(env, values["chain.key_file"], values["source.path"])
    except ChainKeyError as exc:
        raise ConfigError(str(exc)) from None
    chain_key = found_key.key

    secrets = [v for v in values["export.headers"].values() if v]
    secrets.extend(vendor_secrets)  # redacted even when the preset is not used
    if chain_key:
        secrets.append(chain_key.decode("utf-8", "replace"))
    parts = urllib.parse.urlsplit(values["export.endpoint"])
    if parts.password:
        secrets.append(parts.password)
    if parts.username:
        secrets.append(parts.username)
    for _, qv in urllib.parse.parse_qsl(parts.query):
        if qv:
            secrets.append(qv)

    return Config(
        values=values,
        origin=origin,
        chain_key=chain_key,
        vendor=vendor
        if (vendor is not None and not explicit_endpoint) or (vendor is not None and vendor.matches(values["export.endpoint"]))
        else None,
        secrets=tuple(s for s in secrets if len(s) >= 4),
        config_file=config_file,
        chain_key_source=found_key.source,
        chain_key_problem=found_key.problem,
    )
