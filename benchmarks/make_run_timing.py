"""What `make run` costs a new user after the installs (README's first section): seconds to the first
200 from /anomaly-score (the small first model), seconds until the full recipe's model answers, and
8 clients across the swap (statuses and versions), from the full model's evaluation to its 20th answer.

    .venv/bin/python benchmarks/make_run_timing.py [--train-args "..."]   (TRAIN_ARGS: the Makefile's by default)

Runs deploy/run-default.sh with its defaults in temporary folders, on a free port.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.load import clients_until_version, first_answer  # noqa: E402
from harness.servers import free_port  # noqa: E402


def makefile_default(name: str) -> str:
    match = re.search(rf"^{name} \?= (.+)$", (REPO / "Makefile").read_text(), re.MULTILINE)
    assert match, f"Makefile: no {name}"
    return match.group(1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-args", default=makefile_default("TRAIN_ARGS"))
    parser.add_argument("--eval-args", default=makefile_default("EVAL_ARGS"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="make-run-"))
    port = free_port()
    env = {**os.environ, "VAESERVE": str(REPO / ".venv" / "bin" / "vaeserve"), "VAESERVE_PORT": str(port),
           "MODELS": str(work / "models"), "ARTIFACTS": str(work / "artifacts"), "RUN_DIR": str(work / "full"), "QUICK_RUN_DIR": str(work / "first"),
           "TRAIN_ARGS": args.train_args, "EVAL_ARGS": args.eval_args}
    started = time.monotonic()
    script = subprocess.Popen([str(REPO / "deploy" / "run-default.sh")], cwd=REPO, env=env, start_new_session=True,
                              stdout=(work / "make-run.out").open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        first_answer(url, timeout_s=3600)
        first = time.monotonic() - started
        print(f"first 200 from /anomaly-score: {first:.0f} s after make run started", flush=True)
        # Idle while the full recipe trains (clients would slow it), then 8 clients from its evaluation's
        # end, across the export and the swap, until the full model has answered 20 times.
        while not (work / "full" / "evaluation.json").is_file():
            time.sleep(1)
        seen = asyncio.run(clients_until_version(url, "2", clients=8, timeout_s=3600))
        full = time.monotonic() - started
        print(f"the full model answers: {full:.0f} s ({full / 60:.1f} min) after make run started", flush=True)
        print(f"8 clients across the swap: {seen}", flush=True)
    finally:
        os.killpg(script.pid, signal.SIGTERM)
        script.wait(60)
    evaluation = work / "full" / "evaluation.json"
    if evaluation.is_file():
        print(f"full model's evaluation: {evaluation.read_text()[:400]}")
    print(f"logs: {work}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
