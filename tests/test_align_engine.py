"""A tiny RRTF run on the shared DeepSpeed engine (one CPU rank): trained on ranked responses to some
problems, the policy's ranking loss falls and its ranking accuracy rises on held-out problems."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from components import tokenize
from components.align import group_records, probe_logprobs, ranked_groups
from components.align.feedback import ranking_pairs
from components.align.responses import score
from components.benchmarks import parse_problem
from components.evaluate.evaluator import load_model
from components.params.evaluate import SandboxLimits
from components.problems.doctests import doctest_problems
from components.stage_runner import call_stage
from components.tokens.dataset import load_tokenizer, read_index
from components.train.launch import job_payload
from components.train.model import build_model, hf_config
from tests.conftest import make_params
from tests.test_sft_engine import rank_env
from tests.test_train_deepspeed import write_clean_corpus

pytestmark = pytest.mark.slow

SEQ_LEN = 128


def add_problem(k: int):
    docstring = f'    """Return x plus {k}.\n\n    >>> add_{k}(1)\n    {1 + k}\n    """\n'
    source = f"def add_{k}(x):\n{docstring}    return x + {k}\n"
    mined = doctest_problems(source, f"repo/add_{k}.py")[0][0]
    return parse_problem(mined.record({}), "humaneval", "problems", mined.task_id)


def answers(k: int) -> list[str]:
    """One response per feedback level, best first: passes, fails a test, raises, does not compile."""
    return [f"    return x + {k}\n", f"    return x - {k}\n", "    return x + y\n", "    return x +\n"]


def ranked_records(ks: list[int], tokenizer) -> list[dict]:
    problems = [add_problem(k) for k in ks]
    texts = [answers(k) for k in ks]
    responses = score(problems, texts, [["policy"] * 4 for _ in ks], False, SandboxLimits())
    assert all([r.level for r in group] == [3, 2, 1, 0] for group in responses)
    return group_records(problems, responses, tokenizer, chat=False)


def ranking_accuracy(model_dir: str, records: list[dict]) -> float:
    """How often a model's likelihood order agrees with the test order on ``records``."""
    model, tokenizer = load_model(Path(model_dir))
    groups, dropped = ranked_groups(records, tokenizer, False, SEQ_LEN + 1)
    assert dropped == 0
    agreeing = pairs = 0
    logprobs = probe_logprobs(model, tokenizer.pad_token_id, groups, SEQ_LEN + 1)
    for group, values in zip(groups, logprobs, strict=True):
        found, counted = ranking_pairs(values, group.scores)
        agreeing, pairs = agreeing + found, pairs + counted
    return agreeing / pairs


def test_align_lowers_the_ranking_loss_and_raises_ranking_accuracy_on_held_out_problems(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    params = make_params(
        tokenize={"vocab_size": 400, "val_fraction": 0.2},
        model={"hidden": 64, "layers": 2, "heads": 4, "kv_heads": 1, "intermediate": 128, "seq_len": SEQ_LEN},
        train={"num_gpus": 1, "micro_batch": 4, "grad_accum": 1, "log_every": 5, "eval_every": 100},
        align={"steps": 60, "lr": 3e-3, "chat": False, "sft_weight": 0.2},
    )
    write_clean_corpus(tmp_path / "data/clean", repos=8, modules=2)
    call_stage(tokenize.STAGE, params, ["data/clean"], "data/tokenize")
    index = read_index("data/tokenize")
    tokenizer = load_tokenizer("data/tokenize")
    torch.manual_seed(0)  # the same starting policy every run
    build_model(hf_config(params.model, index["vocab_size"], index["eos_id"])).save_pretrained("models/sft")
    tokenizer.save_pretrained("models/sft")
    Path("models/sft/training.json").write_text(json.dumps({"stage": "sft"}))
    # Every last digit occurs in both sets: held-out problems differ, their tokens are not new.
    train = ranked_records([k for k in range(1, 46) if k % 3], tokenizer)
    heldout = ranked_records(list(range(3, 46, 3)), tokenizer)
    Path("groups.jsonl").write_text("".join(json.dumps(record) + "\n" for record in train))
    Path("job.json").write_text(json.dumps(job_payload(params.stage_config("align"), params.context())))
    worker = [sys.executable, "-m", "components.train.worker", "--stage", "align", "--job-json", "job.json"]
    inputs = ["--input", "models/sft", "--input", "data/tokenize", "--input", "groups.jsonl"]
    subprocess.run([*worker, *inputs, "--output", "models/align"], check=True, env=rank_env(), timeout=600)

    accuracy_before = ranking_accuracy("models/sft", heldout)
    accuracy_after = ranking_accuracy("models/align", heldout)
    # The ranking loss falls in training; on held-out problems the order of the likelihoods comes to
    # follow the tests. (The held-out hinge of a random start is near 0 only because all its
    # likelihoods are nearly equal: docs/post-training.md.)
    curve = json.loads(Path("models/align/training.json").read_text())["curve"]
    assert curve[-1]["rank_loss"] < curve[0]["rank_loss"] / 4
    assert accuracy_after > accuracy_before and accuracy_after >= 0.7  # measured: 0.68 -> 0.73
    assert {"loss", "rank_loss", "sft_loss"} <= set(curve[0])
