"""What a newcomer waits for: `wattscale quickstart` (first run and re-run) and the README's test command.

Issue 14's targets: the quickstart in at most 3 minutes on 2 cores, the README's test command in at most 8.
Each is run as a user would, in a subprocess, and timed by wall clock together with the load average
before and after (these machines are shared: a busy neighbour shows up there, not in the figure).

    python benchmarks/newcomer_times.py                  # writes benchmarks/results/newcomer_times.json
    python benchmarks/newcomer_times.py --skip-tests     # the quickstart only (a minute or so)

The test suite needs what CI starts first (PostgreSQL via `source .ci/postgres.sh`, chromium via
`.ci/chromium.sh`); without them those tests skip, and the result records the pytest summary line as it is.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from wattscale.hardware import device_info

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
QUICKSTART_TARGET_SECONDS = 180
TESTS_TARGET_SECONDS = 480


def timed(command: list[str], cwd: Path) -> dict:
    """Run `command` in `cwd`; wall seconds, exit status, load average around it and the output's last line."""
    load_before = os.getloadavg()
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    # pytest's summary ("N passed ... in S s") is the last stdout line; warnings may follow it on stderr.
    lines = [line for line in (done.stdout or done.stderr).splitlines() if line.strip()]
    return {"command": " ".join(command), "wall_seconds": round(seconds, 2), "exit_status": done.returncode,
            "load_average_1min_before": round(load_before[0], 2),
            "load_average_1min_after": round(os.getloadavg()[0], 2),
            "last_line": lines[-1] if lines else ""}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-tests", action="store_true", help="time the quickstart only")
    parser.add_argument("--no-save", action="store_true", help="print the JSON, do not write it")
    args = parser.parse_args()

    result: dict = {"benchmark": "newcomer_times", "date": datetime.now(UTC).isoformat(timespec="seconds"),
                    "command": "python benchmarks/newcomer_times.py" + (" --skip-tests" if args.skip_tests else "")}
    with tempfile.TemporaryDirectory() as folder:
        first = timed(["wattscale", "quickstart", "--no-progress"], Path(folder))
        again = timed(["wattscale", "quickstart", "--no-progress"], Path(folder))
    result["quickstart"] = {"first_run": first, "re_run": again, "target_seconds": QUICKSTART_TARGET_SECONDS,
                            "met": first["exit_status"] == 0 and first["wall_seconds"] <= QUICKSTART_TARGET_SECONDS}
    if not args.skip_tests:
        # The pytest part of the README's test command (the install part is pip's, not ours to time).
        suite = timed([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], REPO)
        result["tests"] = {**suite, "target_seconds": TESTS_TARGET_SECONDS,
                           "met": suite["exit_status"] == 0 and suite["wall_seconds"] <= TESTS_TARGET_SECONDS}
    result["machine"] = {**device_info(torch.device("cpu")), "cpu_count": os.cpu_count()}
    text = json.dumps(result, indent=2)
    print(text)
    if not args.no_save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "newcomer_times.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
