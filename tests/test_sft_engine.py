"""A tiny SFT run through the shared DeepSpeed engine: two stages (mined pairs, then a JSON-lines file),
labels masked on the prompt, and the loss falls.

One CPU rank, started in a subprocess with the distributed environment the launcher would set (the
``sft:`` params section is added to :class:`Params` by subclassing until it is part of the project's).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from components import sft, tokenize
from components.config import Params
from components.sft.config import SftConfig
from components.stage import StageIO
from components.tokenize.dataset import load_tokenizer, read_index
from components.train.engine import train
from components.train.launch import free_port
from components.train.model import build_model, hf_config
from tests.conftest import PROJECT_ROOT, make_params
from tests.test_train_deepspeed import write_clean_corpus

pytestmark = pytest.mark.slow

STAGE_STEPS = 8


class SftParams(Params):
    """Params with the ``sft:`` section."""

    sft: SftConfig = SftConfig()


def sft_params(raw: dict) -> SftParams:
    """The test params (a JSON dump) with their ``sft:`` section."""
    return SftParams.model_validate(raw)


def train_one_rank(params_file: str) -> None:
    """Rank 0 of 1: build the SFT plan and run the engine (what components.train.worker does)."""
    params = sft_params(json.loads(Path(params_file).read_text()))
    io = StageIO(["models/anneal", "data/tokenize", "data/clean"], "models/sft")
    train(params, sft.train_plan(params, io))


def test_sft_through_the_engine_loss_falls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    base = make_params(
        tokenize={"vocab_size": 400, "val_fraction": 0.2},
        model={"hidden": 64, "layers": 2, "heads": 4, "kv_heads": 1, "intermediate": 128, "seq_len": 256},
        train={"num_gpus": 1, "micro_batch": 4, "grad_accum": 1, "log_every": 2, "eval_every": 100},
    )
    write_clean_corpus(tmp_path / "data/clean", repos=8, modules=2)
    tokenize.run(base, StageIO(["data/clean"], "data/tokenize"))
    index = read_index("data/tokenize")
    model = build_model(hf_config(base.model, index["vocab_size"], index["eos_id"]))
    model.save_pretrained("models/anneal")
    load_tokenizer("data/tokenize").save_pretrained("models/anneal")
    Path("models/anneal/training.json").write_text(json.dumps({"stage": "anneal", "final_lr": 0.0}))
    answers = [{"instruction": f"What is {k} + {k}?", "response": f"{k} + {k} = {2 * k}"} for k in range(6)]
    Path("chat.jsonl").write_text("".join(json.dumps(answer) + "\n" for answer in answers))
    raw = base.model_dump(by_alias=True, mode="json")
    raw["sft"] = {
        "stages": [
            {"name": "mined", "steps": STAGE_STEPS, "lr": 3e-3},
            {"name": "chat", "data": ["chat.jsonl"], "steps": STAGE_STEPS, "lr": 3e-3, "warmup": 1},
        ],
        "mined": {"max_pairs": 16},
    }
    Path("params.json").write_text(json.dumps(raw))
    env = {
        **os.environ,
        "PYTHONPATH": str(PROJECT_ROOT),
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "DS_ACCELERATOR": "cpu",
    }
    env.pop("MLFLOW_RUN_ID", None)
    code = "from tests.test_sft_engine import train_one_rank; train_one_rank('params.json')"
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=tmp_path, timeout=600)

    summary = json.loads(Path("models/sft/training.json").read_text())
    assert summary["steps"] == 2 * STAGE_STEPS
    stages = summary["sft"]["stages"]
    assert [stage["name"] for stage in stages] == ["mined", "chat"]
    assert stages[1]["examples"] == len(answers) and 0 < stages[0]["examples"] <= 16
    assert summary["sft"]["mined_pairs"] == stages[0]["examples"]
    losses = [entry["loss"] for entry in summary["curve"]]
    assert len(losses) == STAGE_STEPS  # logged every 2 of 16 steps
    assert losses[STAGE_STEPS // 2 - 1] < losses[0] - 0.5  # the mined stage
    assert losses[-1] < losses[STAGE_STEPS // 2] - 0.5  # the chat stage
    assert Path("models/sft/model.safetensors").is_file()
