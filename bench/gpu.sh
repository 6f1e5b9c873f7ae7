#!/usr/bin/env bash
# For a lent GPU machine (see the device tool): one run, under 5 minutes, numbers printed and kept in $OUT.
#   bash bench/gpu.sh            # eager bf16-mixed + channels-last
#   bash bench/gpu.sh --compile  # also torch.compile (adds compile time)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && PY=.venv/bin/python
if ! "$PY" -c "import torch, timm, lightning, torchvision" 2>/dev/null; then
  echo "bench/gpu.sh: needs torch, torchvision, timm and lightning importable by $PY (make install)" >&2
  exit 2
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
OUT=${OUT:-bench/_work}
mkdir -p "$OUT"
timeout 290 "$PY" -m bench.gpu "$@" | tee "$OUT/gpu.jsonl"
