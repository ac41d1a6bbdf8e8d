#!/usr/bin/env bash
# Download (here, where pip reaches PyPI) the wheels the GPU suite needs on the device machine, into .whl/.
#
# The device image (Python 3.12, torch 2.11 + CUDA 13, no registry access) already holds numpy, tokenizers,
# safetensors, rich, psutil, pyarrow, pandas, scipy, typing-extensions and nvidia-ml-py (pynvml); what the
# suite's imports of wattscale and wattscale.train.train() need beyond those is SQLAlchemy (the results store).
# Zeus is carried for the NVML check's ZeusMonitor comparison: `from zeus.monitor import ZeusMonitor` needs
# only httpx, numpy, pandas, scikit-learn, scipy, python-dateutil, rich and pynvml, all in the image.
# (pingouin and plotly, which the analysis and the report import, are not imported by the suite.)
#
# .whl/ is ignored through .git/info/exclude and never committed; gpu_suite.sh installs it on the device with
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=(sqlalchemy==2.1.9 zeus==0.16.0)
mkdir -p .whl
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"
# One version of each package: two stop the whole install on the device.
dupes=$(ls .whl/*.whl | xargs -n1 basename | cut -d- -f1 | tr 'A-Z_' 'a-z-' | sort | uniq -d)
if [ -n "$dupes" ]; then
    echo "gpu_wheels.sh: more than one wheel of: $dupes; delete the old ones from .whl/" >&2
    exit 2
fi
du -sh .whl
ls -1 .whl
