#!/usr/bin/env bash
# The GPU check in one command: model-only and real-data-path ResNet-50 throughput (bf16,
# channels_last, torch.compile off/on), DDP over every visible GPU, collect on every rank,
# and the chihuahua-muffin default loop end to end. Writes gpu-check.json and gpu-check.md
# under $OUT (or --out DIR); images and runs go to a temporary --work folder.
#
#   bench/gpu.sh                      # GPU machine, <= 8 min on one H100/H200
#   bench/gpu.sh --smoke --out DIR    # CPU smoke run of the same code paths, < 3 min
#   bench/gpu.sh --only model data    # some sections; see bench/gpu_check.py --help
#
# Python: $PYTHON, else the repository's .venv, else python3 (needs torch, torchvision, pylance).
# The loop needs chihuahua-muffin: ../shared/datasets/chihuahua-muffin beside the repository,
# shared/datasets/chihuahua-muffin inside it, or --cm DIR / $DATALOUPE_CM_DIR.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
py="${PYTHON:-}"
if [ -z "$py" ]; then
  if [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=python3; fi
fi
if ! "$py" -c "import torch, torchvision, lance" 2>/dev/null; then
  echo "error: $py cannot import torch, torchvision and lance (set PYTHON=... or run make setup)" >&2
  exit 2
fi
export PYTHONPATH="$here/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
exec "$py" bench/gpu_check.py "$@"
