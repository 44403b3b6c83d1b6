#!/usr/bin/env bash
# On the lent GPU machine, from the repository root, with .gpu-carry/ from bench/gpu_prepare.sh:
# pretraining of the gpu-smoke model on the DeepSpeed engine, then its evaluation (HumanEval pass@1 in
# the sandbox, gold and held-out bpb), in one command of at most 8 minutes. Figures go to $OUT
# (gpu_smoke.md, gpu_smoke.json, the stage reports and the MLflow store).
#
# Tracking: MLFLOW_TRACKING_URI=sqlite:///$OUT/mlflow.db is the documented switch (docs/benchmarks.md)
# that points MLflow at a local file store there; nothing is skipped: the stages log as under dvc repro.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the folder the figures go to}"
CARRY="${CARRY:-.gpu-carry}"
PY="${PY:-python3}"
WORK="${WORK:-/tmp/codemill-gpu-check}"   # models stay here: they do not travel back
SITE="$WORK/site"
rm -rf "$WORK" && mkdir -p "$WORK/models" "$SITE" "$OUT"
test -f "$CARRY/params.yaml" || { echo "gpu_check: $CARRY/params.yaml missing: run bench/gpu_prepare.sh first" >&2; exit 2; }

echo "== unpack the carried wheels of what this machine lacks"
"$PY" - "$CARRY/wheels" "$SITE" <<'PYTHON'
import importlib.metadata
import pathlib
import re
import sys
import zipfile

wheels, site = pathlib.Path(sys.argv[1]), sys.argv[2]
for wheel in sorted(wheels.glob("*.whl")):
    name = re.sub(r"[-_.]+", "-", wheel.name.split("-")[0]).lower()
    try:
        print(f"  {name}: {importlib.metadata.version(name)} already here")
        continue
    except importlib.metadata.PackageNotFoundError:
        pass
    zipfile.ZipFile(wheel).extractall(site)
    print(f"  {name}: {wheel.name}")
PYTHON
export PYTHONPATH="$PWD:$SITE"
export MLFLOW_TRACKING_URI="sqlite:///$OUT/mlflow.db" MLFLOW_DISABLE_TELEMETRY=true HF_HUB_OFFLINE=1
"$PY" -c "import torch; assert torch.cuda.is_available(), 'gpu_check: no CUDA device'; print(torch.cuda.get_device_name())"

echo "== roofline: bf16 matmul"
"$PY" bench/gpu_figures.py roofline --out "$OUT"

echo "== pretrain (DeepSpeed, gpu-smoke profile)"
start=$(date +%s)
"$PY" -m components.pretrain --params "$CARRY/params.yaml" --input "$CARRY/data/tokenize" \
  --output "$WORK/models/pretrain" --report "$OUT/pretrain.json"
echo "pretrain: $(( $(date +%s) - start )) s"

echo "== evaluate (HumanEval greedy pass@1 in the sandbox, gold and held-out bpb)"
start=$(date +%s)
"$PY" -m components.evaluate --params "$CARRY/params.yaml" --input "$WORK/models" \
  --input "$CARRY/data/curate.holdout" --output "$WORK/eval" --report "$OUT/evaluate.json"
cp "$WORK/eval.json" "$OUT/eval.json" 2>/dev/null || true
echo "evaluate: $(( $(date +%s) - start )) s"

"$PY" bench/gpu_figures.py summary --out "$OUT" --eval "$WORK"
