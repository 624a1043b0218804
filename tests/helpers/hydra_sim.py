"""A faithful simulator of the hydra audit-trail producer (github enchanter-ai/hydra), our own
code written from reading the plugin's hooks; nothing of theirs is vendored or fetched.

What it reproduces, as the plugin does it:
  - the tree: <root>/plugins/audit-trail/state/audit.jsonl with hmac-key.bin beside it, and the
    sibling plugins' own files (egress-shield/state/audit.ndjson, secret-scanner/ and
    action-guard/state/audit.jsonl, rows without prev_hash);
  - the key: $HYDRA_AUDIT_HMAC_KEY if set and non-empty, else the text of hmac-key.bin without
    its trailing newlines, the file created on first use (64 hex characters and a newline,
    then chmod 0600); plain SHA-256 only when neither is possible;
  - prev_hash = base64(HMAC-SHA256(key, `jq -c -S .` of the last non-blank line)), or of that
    line's raw bytes when jq cannot read it; "GENESIS" for a missing or empty file;
  - the race: prev_hash is computed BEFORE the lock, so parallel calls fork the chain, and
    identical parallel calls in one second write byte-identical lines;
  - log_metric: an mkdir lock (50 tries, 0.1 s apart, then the row is silently dropped), and
    inside it the rotation `tail -n 1000 f > f.tmp; mv f.tmp f` once the file exceeds
    10485760 bytes (both numbers are parameters here);
  - egress-shield's policy_blocked rows, appended under flock (not the mkdir lock), without
    prev_hash, into the audit-trail file too.
Not reproduced: metrics.jsonl, and the plugin's first-use race on hmac-key.bin (the first
calls that hash a line can each write a key, and a row is then hashed with a key that another
call overwrites): the first two calls run alone, before the writers start.

Writers are real processes (`python -m tests.helpers.hydra_sim writer ...`). From the command
line, at the repository root: `python -m tests.helpers.hydra_sim ROOT --rows 500 --writers 4
--max-bytes 65536`.
Every line appended to audit.jsonl is also appended to <root>/sim/journal.ndjson (under the same
lock), so tests know every row ever written after rotation deleted most of them.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .hydra_plan import SimReport, make_plan
from .hydra_producer import (
    DROPPED,
    KEEP_LINES,
    MAX_AUDIT_BYTES,
    PLUGINS,
    ROTATED,
    HydraTree,
    Settings,
    run_event,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
WRITER = [sys.executable, "-m", "tests.helpers.hydra_sim", "writer"]


def writer_main(plan_file: Path, index: int) -> None:
    doc = json.loads(plan_file.read_text())
    tree, settings = HydraTree(Path(doc["root"])), Settings(**doc["settings"])
    rng = random.Random(doc["seed"] * 1000 + index)
    sys.stdin.readline()  # the start signal: every writer begins at once
    outcomes: list[int] = []
    for event in doc["writers"][index]:
        outcomes += run_event(tree, event, settings, rng)
        time.sleep(rng.uniform(0, 2 * settings.pause))
    print(json.dumps({"dropped": outcomes.count(DROPPED), "rotations": outcomes.count(ROTATED)}))


def simulate(
    root: Path,
    rows: int = 500,
    writers: int = 4,
    settings: Settings | None = None,
    key: str | None = None,
    seed: int = 1,
    **plan_options: Any,
) -> SimReport:
    """Write about `rows` lines into root's audit-trail file with `writers` parallel processes.
    `key` sets HYDRA_AUDIT_HMAC_KEY; without it the plugin's key file is used (created)."""
    settings = settings or Settings()
    tree = HydraTree(root)
    for plugin in PLUGINS:  # an installed plugin tree has its state directories
        tree.state(plugin).mkdir(parents=True, exist_ok=True)
    tree.journal.parent.mkdir(parents=True, exist_ok=True)
    plan = make_plan(rows, writers, seed, **plan_options)
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_AUDIT_HMAC_KEY"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    if key is not None:
        env["HYDRA_AUDIT_HMAC_KEY"] = key
    # The first calls run alone, in order (see FIRST_CALLS), then the rest in parallel.
    plan_file = tree.journal.parent / f"plan-{seed}.json"
    plan_file.write_text(json.dumps({"root": str(root), "seed": seed, "settings": asdict(settings), "writers": [plan.first]}))
    alone = subprocess.run([*WRITER, str(plan_file), "0"], input="go\n", env=env, check=True, capture_output=True, text=True)
    plan_file.write_text(json.dumps({"root": str(root), "seed": seed, "settings": asdict(settings), "writers": plan.writers}))
    procs = [
        subprocess.Popen([*WRITER, str(plan_file), str(i)], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for i in range(len(plan.writers))
    ]
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    results = [json.loads(alone.stdout)]
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"hydra_sim writer failed with {proc.returncode}")
        results.append(json.loads(out))
    return plan.report(tree, results, key)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["writer"]:
        writer_main(Path(args[1]), int(args[2]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="the hydra root (plugins/... is created under it)")
    parser.add_argument("--rows", type=int, default=500)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--max-bytes", type=int, default=MAX_AUDIT_BYTES, help="rotation size")
    parser.add_argument("--keep-lines", type=int, default=KEEP_LINES)
    parser.add_argument("--window", type=float, default=Settings.window)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--key", help="HYDRA_AUDIT_HMAC_KEY for the writers (default: the key file)")
    opts = parser.parse_args(args)
    settings = Settings(max_bytes=opts.max_bytes, keep_lines=opts.keep_lines, window=opts.window)
    report = simulate(opts.root, opts.rows, opts.writers, settings, opts.key, opts.seed)
    print(json.dumps(asdict(report), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
