"""What the daemon makes of a file written by the hydra producer simulator (not a test): rows,
spans, chain verdicts per kind, break spans, and `audit-otlp verify`'s output, with the daemon
on its defaults (no key configured) so it must find the plugin's key itself.

    python tests/benchmarks/hydra_counts.py                    # 500 rows, 4 writers
    python tests/benchmarks/hydra_counts.py --rows 2001 --writers 4 --seed 7
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from tests.helpers.collector import Collector, attrs
from tests.helpers.hydra_plan import classify_links
from tests.helpers.hydra_producer import HydraTree
from tests.helpers.hydra_sim import simulate


def verdict_of(span_attrs: dict[str, object]) -> str:
    if "audit.chain.verdict" in span_attrs:
        return str(span_attrs["audit.chain.verdict"])
    verified = span_attrs.get("audit.chain.verified")  # before verdicts existed
    return {True: "verified=true", False: "verified=false", None: "verified absent"}[verified]  # type: ignore[index]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=500)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--configure-key", action="store_true", help="also give the daemon the key (AUDIT_OTLP_CHAIN_KEY)")
    args = parser.parse_args()
    cli = shutil.which("audit-otlp", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    assert cli, "audit-otlp is not installed"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUDIT_OTLP_", "OTEL_", "HYDRA_"))}
    with tempfile.TemporaryDirectory() as tmp:
        tree = HydraTree(Path(tmp) / "hydra")
        report = simulate(tree.root, args.rows, args.writers, seed=args.seed)
        key = tree.key_file.read_bytes().rstrip(b"\n")
        if args.configure_key:
            env["AUDIT_OTLP_CHAIN_KEY"] = key.decode()
        links = Counter(classify_links(tree.audit.read_bytes().splitlines(), key))
        with Collector() as collector:
            run = subprocess.run(
                [
                    cli,
                    "run",
                    "--once",
                    "--deadline",
                    "120",
                    "--file",
                    str(tree.audit),
                    "--checkpoint",
                    str(Path(tmp) / "cp.json"),
                    "--endpoint",
                    collector.endpoint,
                ],
                env=env,
                capture_output=True,
                text=True,
                timeout=180,
                check=False,
            )
            spans = collector.accepted_spans()
        verify = subprocess.run(
            [cli, "verify", str(tree.audit)], env=env, capture_output=True, text=True, timeout=120, check=False
        )
    names = Counter(s["name"] for s in spans)
    rows = [attrs(s) for s in spans if s["name"] not in ("audit.chain_broken",)]
    print(
        json.dumps(
            {
                "simulator": {
                    "rows": report.rows,
                    "writers": args.writers,
                    "dropped": report.dropped,
                    "twins": report.twins,
                    "egress": report.egress,
                    "non_json": report.stray,
                    "links": dict(links),
                },
                "daemon": {
                    "exit": run.returncode,
                    "spans": len(spans),
                    "row_spans": len(rows),
                    "chain_broken_spans": names.get("audit.chain_broken", 0),
                    "verdicts": dict(Counter(verdict_of(a) for a in rows)),
                    "distinct_row_span_ids": len({s["spanId"] for s in spans if s["name"] != "audit.chain_broken"}),
                    "warnings": [line for line in run.stderr.splitlines() if "key" in line.lower()][:3],
                },
                "verify": {
                    "exit": verify.returncode,
                    "stdout": verify.stdout.strip().splitlines()[-16:],
                    "stderr": verify.stderr.strip().splitlines()[-5:],
                },
            },
            indent=1,
            ensure_ascii=False,
        )
    )


if __name__ == "__main__":
    main()
