"""Every configuration key given an invalid value (in the TOML file, and through its environment
variable where it has one) makes `check-config` and `run` exit 2 with a message naming the key;
an unknown key does the same. The invalid values are found from each key's own parser, so a key
added to config.KEYS is covered without touching this file.
"""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from audit_otlp.config import KEYS, Key
from tests.helpers.daemon import daemon_env

TOML_CANDIDATES: tuple[Any, ...] = ("bogus-value!", -1, 0, 42, True, [1], {"a": [1]})
ENV_CANDIDATES: tuple[str, ...] = ("bogus-value!", "-1", "0", "99999999999", "a,b")


def _rejects(parse: Any, raw: Any) -> bool:
    try:
        parse(raw)
    except ValueError:
        return True
    return False


def toml_literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_literal(v)}" for k, v in value.items()) + " }"
    return '"' + value + '"'


def invalid_toml_value(key: Key) -> Any:
    for raw in TOML_CANDIDATES:
        if _rejects(key.parse, raw):
            return raw
    raise AssertionError(f"no invalid TOML value known for {key.name}: add one to TOML_CANDIDATES")


def invalid_env_value(key: Key) -> str | None:
    parse = key.env_parse or key.parse
    return next((raw for raw in ENV_CANDIDATES if _rejects(parse, raw)), None)


def cli(
    audit_cli: str, tmp_path: Path, command: str, config: Path | None, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    argv = [audit_cli, command]
    if config is not None:
        argv += ["--config", str(config)]
    if command == "run":
        argv += [
            "--once",
            "--deadline",
            "5",
            "--file",
            str(tmp_path / "audit.jsonl"),
            "--checkpoint",
            str(tmp_path / "state" / "cp.json"),
            "--endpoint",
            "http://127.0.0.1:9/v1/traces",
        ]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=daemon_env(**env))


def assert_exit2_naming(done: subprocess.CompletedProcess[str], name: str, what: str) -> None:
    assert done.returncode == 2, f"{what}: exit {done.returncode}\n{done.stdout[-500:]}{done.stderr[-1500:]}"
    assert name in done.stderr, f"{what}: the message does not name {name}: {done.stderr[-1500:]}"
    assert "Traceback" not in done.stderr, done.stderr


@pytest.mark.parametrize("key", KEYS, ids=[k.name for k in KEYS])
def test_invalid_value_exits_2_naming_the_key(audit_cli: str, tmp_path: Path, key: Key) -> None:
    section, _, leaf = key.name.partition(".")
    config = tmp_path / "bad.toml"
    config.write_text(f"[{section}]\n{leaf} = {toml_literal(invalid_toml_value(key))}\n")
    runs: list[tuple[str, str, Path | None, dict[str, str], str]] = [
        (f"TOML {key.name} via {cmd}", cmd, config, {}, key.name) for cmd in ("check-config", "run")
    ]
    for env_name in key.env:
        bad = invalid_env_value(key)
        if bad is None:
            continue  # every string is a valid value here (a path): nothing to reject
        # The message must name the variable the user set (it is where the bad value is).
        runs += [(f"env {env_name}={bad!r} via {cmd}", cmd, None, {env_name: bad}, env_name) for cmd in ("check-config", "run")]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda r: cli(audit_cli, tmp_path, r[1], r[2], r[3]), runs))
    for (what, _, _, _, name), done in zip(runs, results):
        assert_exit2_naming(done, name, what)


@pytest.mark.parametrize(
    "text, name",
    [
        ('[source]\npaht = "x"\n', "source.paht"),
        ('[exporter]\nendpoint = "http://x"\n', "exporter.endpoint"),
        ("top_level = 1\n", "top_level"),
    ],
)
def test_unknown_key_exits_2_naming_it(audit_cli: str, tmp_path: Path, text: str, name: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(text)
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda cmd: cli(audit_cli, tmp_path, cmd, config, {}), ("check-config", "run")))
    for cmd, done in zip(("check-config", "run"), results):
        assert_exit2_naming(done, name, f"unknown key via {cmd}")
