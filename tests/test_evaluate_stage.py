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
    clean = write_clean_shards(root / "clean", corpus())  # also the held-out documents of the tests
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


EVAL_SETTINGS = {
    "benchmarks": [
        {"name": "humaneval", "builtin": "humaneval", "limit": PROBLEMS},
        {"name": "infill", "builtin": "humaneval-infilling-single", "limit": PROBLEMS, "sampled": False},
    ],
    "models": ["pretrain"],
    "max_new_tokens": 16,
    "sampling": True,
    "n_samples": 2,
    "k": [1, 2],
    "holdout_tokens": 3000,
    "line_completions": 6,
    "bootstrap_resamples": 200,
    "timeout_s": 5.0,
}


@pytest.mark.slow
def test_stage_writes_generations_results_scores_intervals_and_settings(
    workspace: Path, mlflow_uri: str
) -> None:
    params = make_params(evaluate=EVAL_SETTINGS)
    output = workspace / "reports" / "eval"
    io = STAGE.resolve([str(workspace / "models"), str(workspace / "clean")], str(output))
    report = run_stage(STAGE, params, io, str(workspace / "reports" / "evaluate.json"))
    [active] = mlflow.search_runs(filter_string="tags.`codemill.stage` = 'evaluate'", output_format="list")
    model_dir = output / "pretrain"
    results = [json.loads(line) for line in (model_dir / "humaneval.results.jsonl").read_text().splitlines()]
    greedy = [line for line in results if line["mode"] == "greedy"]
    assert len(greedy) == PROBLEMS and len([r for r in results if r["mode"] == "sample"]) == 2 * PROBLEMS
    for line in results:
        assert {"benchmark", "task_id", "completion", "passed", "result", "error", "seconds"} <= set(line)
    infill = (model_dir / "infill.samples.jsonl").read_text().splitlines()
    assert len(infill) == PROBLEMS and all("\n" not in json.loads(line)["completion"] for line in infill)

    generation = json.loads((model_dir / "generation.json").read_text())
    runs = {(run["benchmark"], run["mode"]): run for run in generation["runs"]}
    assert set(runs) == {("humaneval", "greedy"), ("humaneval", "sample"), ("infill", "greedy")}
    assert runs[("humaneval", "sample")]["temperature"] == params.evaluate.temperature
    assert runs[("infill", "greedy")]["stop"] == ["\n"] and generation["seed"] == params.project.seed

    summary = json.loads((workspace / "reports" / "eval.json").read_text())
    scores = summary["models"]["pretrain"]
    assert scores["humaneval.pass_at_1"] == sum(line["passed"] for line in greedy) / PROBLEMS
    assert not any("@" in key for key in scores), "one spelling of each key: pass_at_1"
    interval_metrics = ("humaneval.pass_at_1", "humaneval.gold_bpb", "infill.gold_bpb", "val.bpb")
    for metric in (*interval_metrics, "val.python.bpb", "line.exact_match"):
        assert scores[f"{metric}.ci_low"] <= scores[metric] <= scores[f"{metric}.ci_high"], metric
    assert 0 < scores["humaneval.gold_bpb"] < 20 and 0 < scores["val.bpb"] < 20  # a random tiny model
    assert scores["line.exact_match.n"] == 6
    assert summary["settings"]["sandbox_isolation"] in ("namespaces", "seccomp", "none")
    assert summary["settings"]["held_out_documents"] > 0
    assert report.metrics["pretrain.humaneval.gold_bpb"] == scores["humaneval.gold_bpb"]
    plot = json.loads((workspace / "reports" / "eval_plots" / "val.bpb.json").read_text())
    assert plot == [{"model": "pretrain", "score": scores["val.bpb"], "ci_low": scores["val.bpb.ci_low"],
                     "ci_high": scores["val.bpb.ci_high"]}]  # fmt: skip

    from components.register.publish import read_eval_metrics

    gated = read_eval_metrics(workspace / "reports" / "eval.json", "pretrain")
    assert gated["humaneval.gold_bpb"] == scores["humaneval.gold_bpb"]
    run_data = mlflow.get_run(active.info.run_id).data
    assert json.loads(run_data.params["eval.top_p"]) == params.evaluate.top_p
    assert run_data.params["eval.benchmark.infill"] == "builtin:humaneval-infilling-single"
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(active.info.run_id, "eval/pretrain")}
    assert "eval/pretrain/humaneval.samples.jsonl" in artifacts

    # Scoring is a step of its own: the saved generations score the same without the model.
    from components.benchmarks import load_benchmark
    from components.evaluate.scoring import read_samples, score_samples

    problems = {p.task_id: p for p in load_benchmark(params.evaluate.benchmarks[0])}
    again = score_samples(read_samples(str(model_dir / "humaneval.samples.jsonl"), problems), problems)
    assert [r["result"] for r in again] == [r["result"] for r in results]


def test_a_model_trained_on_the_solutions_has_a_lower_gold_bpb_than_a_fresh_one(workspace: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from components.benchmarks import load_benchmark
    from components.evaluate.evaluator import Benchmark, gold_bpb
    from components.params.evaluate import BenchmarkSpec

    spec = BenchmarkSpec(name="humaneval", builtin="humaneval", limit=8)
    benchmark = Benchmark(spec, load_benchmark(spec))
    model_dir = workspace / "models" / "pretrain"
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    fresh = AutoModelForCausalLM.from_pretrained(str(model_dir))
    before = gold_bpb(fresh, tokenizer, benchmark, 8)
    trained = AutoModelForCausalLM.from_pretrained(str(model_dir))
    texts = [problem.prompt + (problem.gold or "") for problem in benchmark.problems]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW(trained.parameters(), lr=3e-3)
    torch.manual_seed(0)
    trained.train()
    for _ in range(60):
        loss = trained(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = gold_bpb(trained.eval(), tokenizer, benchmark, 8)
    assert before is not None and after is not None
    assert after.value < 0.7 * before.value, (before.value, after.value)


def _params_file(root: Path, **evaluate: object) -> Path:
    import yaml

    raw = make_params(evaluate={**EVAL_SETTINGS, **evaluate}).model_dump(by_alias=True, mode="json")
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


@pytest.mark.slow
def test_codemill_evaluate_takes_an_exported_directory_and_a_registry_version(
    workspace: Path, mlflow_uri: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from components.cli import main
    from components.register.publish import log_model

    params = _params_file(tmp_path, sampling=False)
    model_dir = workspace / "models" / "pretrain"
    common = ["--params", str(params), "--benchmarks", "humaneval", "--holdout", str(workspace / "clean")]
    assert main(["evaluate", "--model", str(model_dir), "--output", str(tmp_path / "dir"), *common]) == 0
    from_dir = json.loads((tmp_path / "dir" / "eval.json").read_text())["models"][str(model_dir)]
    assert from_dir["humaneval.problems"] == PROBLEMS and "infill.problems" not in from_dir
    assert from_dir["val.bpb.ci_low"] <= from_dir["val.bpb"] <= from_dir["val.bpb.ci_high"]

    with mlflow.start_run():
        version = log_model(model_dir, "codemill-evaltest", 16)
    mlflow.MlflowClient().set_registered_model_alias("codemill-evaltest", "champion", version)
    uri = "models:/codemill-evaltest@champion"
    assert main(["evaluate", "--model", uri, "--output", str(tmp_path / "uri"), *common]) == 0
    from_uri = json.loads((tmp_path / "uri" / "eval.json").read_text())["models"][uri]
    # The same weights, the same seeds: the same scores from the registry as from the directory.
    for metric in ("humaneval.pass_at_1", "humaneval.gold_bpb", "val.bpb", "line.exact_match"):
        assert from_uri[metric] == pytest.approx(from_dir[metric], rel=1e-6), metric
    assert main(["evaluate", "--model", "models:/codemill-evaltest@nope", *common]) == 2
    assert "codemill evaluate:" in capsys.readouterr().err


@pytest.mark.slow
def test_models_evaluated_in_parallel_score_as_alone_and_compare_as_equal(
    workspace: Path, mlflow_uri: str
) -> None:
    import shutil

    shutil.copytree(workspace / "models" / "pretrain", workspace / "models" / "twin", dirs_exist_ok=True)
    settings = {**EVAL_SETTINGS, "models": ["pretrain", "twin"], "model_workers": 2, "sampling": False}
    params = make_params(evaluate=settings)
    output = workspace / "reports" / "eval-twins"
    io = STAGE.resolve([str(workspace / "models"), str(workspace / "clean")], str(output))
    run_stage(STAGE, params, io, str(workspace / "reports" / "evaluate-twins.json"))
    summary = json.loads((workspace / "reports" / "eval-twins.json").read_text())
    first, second = summary["models"]["pretrain"], summary["models"]["twin"]
    assert first == second  # two processes, the same weights: the same scores
    compared = summary["comparisons"]["pretrain->twin"]
    assert compared["val.bpb"]["difference"] == 0 and not compared["val.bpb"]["significant"]
