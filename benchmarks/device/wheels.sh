#!/usr/bin/env bash
# Run HERE (a machine with PyPI), before a device check: fills .whl/ (in .gitignore) with what
# check.sh installs on a lent GPU machine, which reaches no package registry. That machine's
# image already holds torch, torchvision, timm, transformers, numpy, ml_dtypes, pytest,
# hypothesis, pluggy, pyyaml, click, rich, safetensors, scikit-learn and pillow
# (/work/.library/device/KINDS.md); it lacks jsonschema and its dependencies. So .whl/ gets:
#   * QBench's five packages as wheels built from this checkout (entry points included: a
#     plain PYTHONPATH of the src folders would register no plugin);
#   * jsonschema, jsonschema-specifications, referencing and rpds-py for that machine's
#     Python (3.12 unless PYTHON_VERSION says otherwise; rpds-py is compiled, so its wheel
#     is per Python version).
# Usage: benchmarks/device/wheels.sh [python version, default 3.12]
set -euo pipefail
cd "$(dirname "$0")/../.."
version="${1:-${PYTHON_VERSION:-3.12}}"
rm -rf .whl && mkdir -p .whl
for package in qbench-core qbench-formats qbench-ops qbench-adapters qbench-eval; do
  uv build --quiet --wheel --out-dir .whl "$package"
done
platforms=()
for n in 28 27 17; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
platforms+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64)
# the versions uv.lock pins, so that the device runs what CI runs
pins=$(python3 benchmarks/device/pins.py jsonschema jsonschema-specifications referencing rpds-py)
# shellcheck disable=SC2086
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$version" \
  --implementation cp "${platforms[@]}" -d .whl $pins
ls -l .whl
du -sh .whl
