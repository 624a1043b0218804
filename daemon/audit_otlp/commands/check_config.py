"""`audit-otlp check-config`: the effective configuration with every secret masked, and where each
value came from (default, file, env:VARIABLE or option)."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

import orjson

from audit_otlp.config import Config
from audit_otlp.runtime.lifecycle import EXIT_OK


def main(args: argparse.Namespace, config: Config) -> int:
    masked = config.masked()
    origin = dict(config.origin)
    # Values that are not keys of their own: where the chain key and vendor preset came from.
    if config.chain_key:
        origin["chain.key"] = "env:AUDIT_OTLP_CHAIN_KEY" if os.environ.get("AUDIT_OTLP_CHAIN_KEY") else "file:chain.key_file"
    else:
        origin["chain.key"] = "default"
    if config.vendor:
        origin["vendor"] = f"env:{config.vendor.env_name}"
    if args.json:
        doc = {"config_file": str(config.config_file) if config.config_file else None, "values": masked, "origin": origin}
        print(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS, default=str).decode())
        return EXIT_OK
    print(f"# configuration file: {config.config_file or 'none (defaults, environment and options only)'}")
    print("# origin: default | file | env:VARIABLE | option; secrets are shown as ***")
    width = max(len(k) for k in masked)
    for key in sorted(masked):
        print(f"{key:<{width}} = {_show(masked[key])}    # {origin.get(key, 'derived')}")
    return EXIT_OK


def _show(value: Any) -> str:
    if isinstance(value, (dict, list, bool)) or value is None:
        return json.dumps(value)
    if isinstance(value, str):
        return json.dumps(value)
    return str(value)
