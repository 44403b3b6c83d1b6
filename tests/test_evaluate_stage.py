"""Evaluate stage: generation (stop sequences, batching), and the whole stage on a tiny exported model."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
import torch

from components.evaluate import STAGE
from components.evaluate.generate import Decoding, extract_code, generate, prompt_budget, truncate_at_stop
from components.stage_runner import run_stage
from components.tokens.tokenizer import load_tokenizer
from components.train.model import build_model, hf_config
from tests.conftest import make_params
from tests.test_tokenize import corpus, tokenize, write_clean_shards

PROBLEMS = 3


def test_truncate_at_stop_cuts_at_the_first_stop_sequence() -> None:
    text = "    return a + b\n\nprint(add(1, 2))\ndef other():\n"
    assert truncate_at_stop(text, ["\ndef", "\nprint"]) == "    return a + b\n"
    assert truncate_at_stop("    return 1", ["\ndef"]) == "    return 1"
    assert truncate_at_stop("\ndef f():", ["\ndef"]) == ""


def test_extract_code_takes_the_first_code_block() -> None:
    assert extract_code("Here:\n```python\ndef f():\n    return 1\n```\nDone") == "def f():\n    return 1\n"
    assert extract_code("def f(): pass") == "def f(): pass"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tokenize output and a tiny random llama exported as models/pretrain with that tokenizer."""
    root = tmp_path_factory.mktemp("eval")
    clean = write_clean_shards(root / "clean", corpus())
    tokenize(clean, root / "tokenize", val_fraction=0.25)
    index = json.loads((root / "tokenize" / "index.json").read_text())
    params = make_params()
    config = hf_config(
        params.model.model_copy(update={"hidden": 32, "layers": 1, "heads": 2, "intermediate": 64}),
        index["vocab_size"],
        index["eos_id"],
    )
    torch.manual_seed(0)
    model = build_model(config)
    model.save_pretrained(root / "models" / "pretrain")
    load_tokenizer(root / "tokenize").save_pretrained(root / "models" / "pretrain")
    return root


def test_batched_left_padded_greedy_matches_one_by_one(workspace: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = workspace / "models" / "pretrain"
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    prompts = ["def add(a, b):\n", "import os\n\n\ndef main():\n    x = 1\n"]
    decoding = Decoding(max_new_tokens=12, stop=("\ndef",))
    batched = generate(model, tokenizer, prompts, decoding, batch_size=2, seed=0)
    single = [generate(model, tokenizer, [p], decoding, batch_size=1, seed=0)[0] for p in prompts]
    assert batched == single
    assert all("\ndef" not in text for text in batched)
    sampled = Decoding(max_new_tokens=12, temperature=0.8, top_p=0.95)
    first = generate(model, tokenizer, prompts, sampled, batch_size=2, seed=3)
    assert first == generate(model, tokenizer, prompts, sampled, batch_size=2, seed=3)


def test_long_prompts_keep_their_end_within_the_context(workspace: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = workspace / "models" / "pretrain"
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    assert prompt_budget(model, 16) == model.config.max_position_embeddings - 16
    tail = "def f(x):\n" + "    y = x + 1\n" * 200  # alone longer than the context
    prompts = ["a = 1\n" * 300 + tail, "import os\n" * 300 + tail]
    decoding = Decoding(max_new_tokens=16)
    first, second = generate(model, tokenizer, prompts, decoding, batch_size=1, seed=0)
    assert first == second  # only the prompts' (identical) last tokens were seen


@pytest.mark.slow
def test_stage_writes_results_summary_and_settings(workspace: Path, mlflow_uri: str) -> None:
    params = make_params(
        evaluate={
            "models": ["pretrain"],
            "problems_limit": PROBLEMS,
            "max_new_tokens": 16,
            "n_samples": 2,
            "k": [1, 2],
            "bpb_sequences": 4,
            "timeout_s": 5.0,
        }
    )
    output = workspace / "reports" / "eval"
    io = STAGE.resolve([str(workspace / "models"), str(workspace / "tokenize")], str(output))
    report = run_stage(STAGE, params, io, str(workspace / "reports" / "evaluate.json"))
    [active] = mlflow.search_runs(filter_string="tags.`codemill.stage` = 'evaluate'", output_format="list")
    lines = [json.loads(line) for line in (output / "pretrain.jsonl").read_text().splitlines()]
    greedy = [line for line in lines if line["mode"] == "greedy"]
    sampled = [line for line in lines if line["mode"] == "sample"]
    assert len(greedy) == PROBLEMS and len(sampled) == 2 * PROBLEMS
    for line in lines:
        assert {"task_id", "completion", "passed", "result", "error", "seconds"} <= set(line)
        assert all(stop not in line["completion"] for stop in params.evaluate.stop)

    summary = json.loads((workspace / "reports" / "eval.json").read_text())
    scores = summary["models"]["pretrain"]
    assert scores["pass_at_1"] == sum(line["passed"] for line in greedy) / PROBLEMS
    assert not any("@" in key for key in scores), "one spelling of each key: pass_at_1"
    assert 0 <= scores["sampled_pass_at_2"] <= 1 and scores["problems"] == PROBLEMS
    assert 0 < scores["bpb"] < 20  # random model over a ~400-token vocabulary
    assert summary["settings"]["temperature"] == params.evaluate.temperature
    assert summary["settings"]["stop"] == params.evaluate.stop
    assert report.metrics["pretrain.pass_at_1"] == scores["pass_at_1"]
    assert report.metrics["pretrain.bpb"] == scores["bpb"]
    plot = json.loads((workspace / "reports" / "eval_scores.json").read_text())
    assert plot == [
        {
            "model": "pretrain",
            **{
                k: scores[k]
                for k in ("pass_at_1", "sampled_pass_at_1", "sampled_pass_at_2", "problems", "bpb")
            },
        }
    ]

    from components.register.publish import read_eval_metrics

    assert (
        read_eval_metrics(workspace / "reports" / "eval.json", "pretrain")["pass_at_1"] == scores["pass_at_1"]
    )
    run_data = mlflow.get_run(active.info.run_id).data
    assert json.loads(run_data.params["eval.top_p"]) == params.evaluate.top_p
    assert json.loads(run_data.params["eval.max_new_tokens"]) == 16
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(active.info.run_id, "eval")}
    assert "eval/pretrain.jsonl" in artifacts
