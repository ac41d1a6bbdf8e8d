#!/usr/bin/env bash
# Are the declared floors true? Installs this checkout (editable, with the test extra) into a fresh venv in a
# temporary folder, every direct dependency pinned to its floor by .ci/floors.txt used as a pip constraints file,
# then runs `ruff check` and the fast tests (-m "not slow") against it. Not run by .ci/run: PyPI's Linux torch
# wheels are CUDA builds, so the venv takes about 7 GB and the install a few minutes.
#
#   bash .ci/check_floors.sh [pytest arguments]     # e.g. -x, or tests/test_store.py
#
# FLOORS_PYTHON names the interpreter (default python3.11, the requires-python floor); FLOORS_KEEP=1 keeps the
# venv. PostgreSQL is started as in .ci/run (.ci/postgres.sh), so the store tests run on both backends; the
# browser tests run where chromium is installed (.ci/chromium.sh) and skip elsewhere. Run it in the foreground:
# a script's `cmd &` ignores SIGINT, and the tests that interrupt a run with it then fail.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
python="${FLOORS_PYTHON:-python3.11}"

# floors.txt must pin exactly the floors pyproject.toml declares (trailing .0s aside).
"$python" - <<'EOF'
import re
import sys
import tomllib

NOT_CHECKED = {"datasets", "nvidia-ml-py"}  # see .ci/floors.txt


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def short(version: str) -> str:
    return re.sub(r"(\.0)+$", "", version)


project = tomllib.load(open("pyproject.toml", "rb"))["project"]
declared = {}
for req in project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]:
    m = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?>=([0-9][^,;\s]*)", req)
    if m is None:
        sys.exit(f"check_floors.sh: {req!r} in pyproject.toml is not of the form NAME>=FLOOR")
    declared[norm(m[1])] = m[3]
pinned = {}
for line in open(".ci/floors.txt"):
    line = line.split("#")[0].strip()
    if line:
        name, version = line.split("==")
        pinned[norm(name)] = version
problems = [f"{name}: pyproject.toml says >={v}, .ci/floors.txt pins {pinned.get(name)}"
            for name, v in sorted(declared.items())
            if name not in NOT_CHECKED and short(pinned.get(name, "")) != short(v)]
problems += [f"{name}: pinned in .ci/floors.txt but not a dependency" for name in sorted(set(pinned) - set(declared))]
if problems:
    sys.exit("check_floors.sh: .ci/floors.txt and pyproject.toml disagree:\n  " + "\n  ".join(problems))
EOF

work="$(mktemp -d -t wattscale-floors.XXXXXX)"
venv="$work/venv"
source .ci/postgres.sh
finish() {
    wattscale_pg_stop
    if [[ "${FLOORS_KEEP:-0}" == 1 ]]; then echo "check_floors.sh: venv kept at $venv" >&2; else rm -rf "$work"; fi
}
trap finish EXIT

"$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check -c .ci/floors.txt -e ".[test]"
echo "check_floors.sh: installed at the floors:" >&2
"$venv/bin/python" - <<'EOF' >&2
import importlib.metadata as md
import platform

import wattscale

names = [line.split("==")[0] for line in open(".ci/floors.txt") if "==" in line.split("#")[0]]
print("  python", platform.python_version(), "| " + " ".join(f"{n} {md.version(n)}" for n in names))
print("  wattscale from", wattscale.__file__)
EOF

"$venv/bin/ruff" check .
export PYTHONPATH="$repo/src${PYTHONPATH:+:$PYTHONPATH}"
"$venv/bin/python" -m pytest -m "not slow" -q -p no:cacheprovider "$@"
