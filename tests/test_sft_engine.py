"""SFT on the shared DeepSpeed engine: a tiny two-stage run (mined pairs, then a JSON-lines file) whose
loss falls, and the token weighting of the loss over an accumulation window.

One CPU rank, started in a subprocess with the distributed environment the launcher would set.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from components import tokenize
from components.stage_runner import call_stage
from components.tokens.dataset import load_tokenizer, read_index
from components.train.launch import free_port, job_payload
from components.train.model import build_model, hf_config
from tests.conftest import PROJECT_ROOT, make_params
from tests.test_train_deepspeed import write_clean_corpus

pytestmark = pytest.mark.slow

STAGE_STEPS = 8


def rank_env() -> dict[str, str]:
    """Rank 0 of 1, as the launcher sets it up."""
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
    return env


def test_sft_through_the_engine_loss_falls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    base = make_params(
        tokenize={"vocab_size": 400, "val_fraction": 0.2},
        model={"hidden": 64, "layers": 2, "heads": 4, "kv_heads": 1, "intermediate": 128, "seq_len": 256},
        train={"num_gpus": 1, "micro_batch": 4, "grad_accum": 1, "log_every": 2, "eval_every": 100},
    )
    write_clean_corpus(tmp_path / "data/clean", repos=8, modules=2)
    call_stage(tokenize.STAGE, base, ["data/clean"], "data/tokenize")
    index = read_index("data/tokenize")
    model = build_model(hf_config(base.model, index["vocab_size"], index["eos_id"]))
    model.save_pretrained("models/anneal")
    load_tokenizer("data/tokenize").save_pretrained("models/anneal")
    Path("models/anneal/training.json").write_text(json.dumps({"stage": "anneal", "final_lr": 0.0}))
    answers = [{"instruction": f"What is {k} + {k}?", "response": f"{k} + {k} = {2 * k}"} for k in range(6)]
    Path("chat.jsonl").write_text("".join(json.dumps(answer) + "\n" for answer in answers))
    params = make_params(
        tokenize=base.tokenize.model_dump(),
        model=base.model.model_dump(),
        train=base.train.model_dump(),
        sft={
            "stages": [
                {"name": "mined", "steps": STAGE_STEPS, "lr": 3e-3},
                {"name": "chat", "source": ["files", "evolved"], "data": ["chat.jsonl"], "steps": STAGE_STEPS}
                | {"lr": 3e-3, "warmup": 1},
            ],
            "mined": {"max_pairs": 16},
        },
    )
    Path("job.json").write_text(json.dumps(job_payload(params.stage_config("sft"), params.context())))
    worker = [sys.executable, "-m", "components.train.worker", "--stage", "sft", "--job-json", "job.json"]
    Path("data/problems").mkdir()  # no stage reads problems here
    Path("data/evol").mkdir()  # the evol stage's output: the chat stage's second source
    evolved = [{"instruction": f"What is {k} * 2?", "response": f"{k} * 2 = {2 * k}"} for k in range(3)]
    Path("data/evol/train.jsonl").write_text("".join(json.dumps(pair) + "\n" for pair in evolved))
    inputs = ["--input", "models/anneal", "--input", "data/tokenize", "--input", "data/clean"]
    inputs += ["--input", "data/problems", "--input", "data/evol"]
    command = [*worker, *inputs, "--output", "models/sft"]
    subprocess.run(command, check=True, env=rank_env(), cwd=tmp_path, timeout=600)

    summary = json.loads(Path("models/sft/training.json").read_text())
    assert summary["steps"] == 2 * STAGE_STEPS
    stages = summary["sft"]["stages"]
    assert [stage["name"] for stage in stages] == ["mined", "chat"]
    assert stages[1]["examples"] == len(answers) + len(evolved) and 0 < stages[0]["examples"] <= 16
    assert stages[1]["conversations"] == {"files": len(answers), "evolved": len(evolved)}
    assert summary["sft"]["mined_pairs"] == stages[0]["examples"]
    losses = [entry["loss"] for entry in summary["curve"]]
    assert len(losses) == STAGE_STEPS  # logged every 2 of 16 steps
    assert losses[STAGE_STEPS // 2 - 1] < losses[0] - 0.5  # the mined stage
    assert losses[-1] < losses[STAGE_STEPS // 2] - 0.5  # the chat stage
    assert Path("models/sft/model.safetensors").is_file()


#: One rank, a tiny llama, two micro-batches of one window with 3 and 30 reply tokens: the engine's
#: gradient and loss must be those of the mean over the 33 tokens, not the mean of the two batch means.
TOKEN_WEIGHTING = """
import copy, json, sys
import deepspeed, torch
from components.train.engine import accumulate_window
from components.train.losses import NextTokenLoss
from components.train.model import build_model, hf_config
from tests.conftest import make_params

tiny = {"hidden": 32, "layers": 1, "heads": 2, "kv_heads": 1, "intermediate": 64, "seq_len": 48}
params = make_params(model=tiny)
torch.manual_seed(0)
model = build_model(hf_config(params.model, 300, 0))
reference = copy.deepcopy(model)
deepspeed.init_distributed(dist_backend="gloo")
config = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 2, "gradient_clipping": 1e9,
          "zero_optimization": {"stage": 1}, "zero_allow_untested_optimizer": True, "steps_per_print": 10**9}
optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)

def batch(replies):
    tokens = torch.randint(1, 300, (1, 49))
    labels = torch.full_like(tokens, -100)
    labels[0, -replies:] = tokens[0, -replies:]
    return tokens, labels

window = [batch(3), batch(30)]
loss = NextTokenLoss()
window_sum, targets = accumulate_window(engine, window, loss, torch.device("cpu"), 1)
sums = [loss(reference, b) for b in window]
token_weighted = (sums[0] + sums[1]) / 33
token_weighted.backward()
expected_norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in reference.parameters())).item()
batch_means = (sums[0].item() / 3 + sums[1].item() / 30) / 2
json.dump({"targets": targets, "loss": window_sum.item() / targets, "expected_loss": token_weighted.item(),
           "batch_means": batch_means, "grad_norm": float(engine.get_global_grad_norm()),
           "expected_grad_norm": expected_norm}, sys.stdout)
"""


def test_window_loss_is_the_token_weighted_mean_over_micro_batches(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", TOKEN_WEIGHTING], env=rank_env(), cwd=PROJECT_ROOT, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["targets"] == 33
    assert found["loss"] == pytest.approx(found["expected_loss"], rel=1e-5)
    assert found["grad_norm"] == pytest.approx(found["expected_grad_norm"], rel=1e-4)
    assert abs(found["loss"] - found["batch_means"]) > 1e-3, "the mean of batch means would differ"
