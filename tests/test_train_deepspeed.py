"""The training stages end to end: 2 CPU ranks under the ``deepspeed`` launcher (gloo, ZeRO-2), a tiny
llama on a tokenized synthetic corpus. One uninterrupted pretraining run is shared by the tests (each
launch costs ~30 s on 2 cores)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import torch

from components import anneal, pretrain, tokenize
from components.errors import StageError
from components.params import Params
from components.shards import BASE_SCHEMA, content_sha256, document_id, write_shard
from components.stage_runner import call_stage, run_stage
from components.train.checkpoint import LATEST
from components.train.engine import RUN_FACTS, STOP_AFTER_ENV
from tests.conftest import make_params

pytestmark = pytest.mark.slow

#: fp32 on CPU with gloo (a fixed reduction order): a resumed run repeats the uninterrupted one exactly;
#: the tolerance only allows for printing/serialisation round-off.
RESUME_TOLERANCE = 1e-5
STEPS = 8

SIGNAL_FIELDS = [
    pa.field("has_docstring", pa.bool_()),
    pa.field("has_tests", pa.bool_()),
    pa.field("quality_score", pa.float64()),
]


def _source(repo: int, module: int) -> tuple[str, bool, bool]:
    """A small Python module; some have docstrings, some tests (the quality signals anneal selects on)."""
    docstring, tests = (repo + module) % 2 == 0, module % 3 == 0
    lines = []
    for k in range(6):
        name = f"compute_{repo}_{module}_{k}"
        lines.append(f"def {name}(values, scale={k + 1}):")
        if docstring:
            lines.append(f'    """Scale each value by {k + 1} and return the total."""')
        lines += [
            "    total = 0",
            "    for value in values:",
            "        total += value * scale",
            "    return total",
            "",
        ]
        if tests:
            lines += [f"def test_{name}():", f"    assert {name}([1, 2, 3]) == {6 * (k + 1)}", ""]
    return "\n".join(lines), docstring, tests


def write_clean_corpus(directory: Path, repos: int = 24, modules: int = 4) -> None:
    """What data/clean looks like: base columns plus curate's quality signals."""
    rows = []
    for repo in range(repos):
        for module in range(modules):
            text, docstring, tests = _source(repo, module)
            name, path = f"org/repo{repo:02d}", f"pkg/module{module}.py"
            rows.append(
                {
                    "id": document_id(name, path),
                    "repo": name,
                    "path": path,
                    "lang": "python",
                    "content": text,
                    "size_bytes": len(text.encode()),
                    "sha256": content_sha256(text),
                    "license": "mit",
                    "stars": repo,
                    "has_docstring": docstring,
                    "has_tests": tests,
                    "quality_score": 0.5 + 0.25 * docstring + 0.25 * tests,
                }
            )
    directory.mkdir(parents=True)
    schema = pa.schema([*BASE_SCHEMA, *SIGNAL_FIELDS])
    write_shard(pa.Table.from_pylist(rows, schema=schema), str(directory / "part-00000.parquet"))


def build_deepspeed_cpu_ops() -> None:
    """Build DeepSpeed's CPU shared-memory comm op once here, not in every rank of every launch.

    It lands in ``$TORCH_EXTENSIONS_DIR`` (default ``~/.cache/torch_extensions``), shared by all launches.
    """
    if torch.cuda.is_available():
        return
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is not None:
        builder.load()


@dataclass
class Workspace:
    root: Path
    params: Params


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    """A project directory with data/clean and data/tokenize, its own MLflow store, tiny training params."""
    root = tmp_path_factory.mktemp("train")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        patch.delenv(STOP_AFTER_ENV, raising=False)
        params = make_params(
            tokenize={"vocab_size": 512, "val_fraction": 0.2},
            model={"hidden": 64, "layers": 2, "heads": 4, "kv_heads": 1, "intermediate": 128, "seq_len": 64},
            train={
                "num_gpus": 2,
                "zero_stage": 2,
                "micro_batch": 4,
                "grad_accum": 2,
                "log_every": 2,  # with checkpoints every 3 steps, a resume carries half an interval
                "eval_every": 4,
                "checkpoint_every": 3,
                "keep_checkpoints": 2,
            },
            pretrain={"steps": STEPS, "warmup": 2, "lr": 3e-3, "min_lr": 3e-4, "decay_fraction": 0.25},
            anneal={"steps": 4, "hq_fraction": 0.5},
        )
        write_clean_corpus(root / "data/clean")
        call_stage(tokenize.STAGE, params, ["data/clean"], "data/tokenize")
        build_deepspeed_cpu_ops()
        yield Workspace(root, params)


def run_pretrain(workspace: Workspace, output: str) -> dict[str, Any]:
    """Pretrain into ``output``; returns its ``training.json`` with the run's facts (timings, resume) from the
    stage report under ``"run"``."""
    io = pretrain.STAGE.resolve(["data/tokenize"], output)
    report = run_stage(pretrain.STAGE, workspace.params, io, "reports/pretrain.json")
    training = json.loads((workspace.root / output / "training.json").read_text())
    assert not set(RUN_FACTS) & set(training), "training.json (a DVC output) holds no timings or resume facts"
    return {**training, "run": report.details}


@pytest.fixture(scope="module")
def reference(workspace: Workspace) -> dict[str, Any]:
    """The uninterrupted pretraining run, exported to models/pretrain."""
    return run_pretrain(workspace, "models/pretrain")


def _generates(model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert model.dtype == torch.float32
    prompt = tokenizer("def compute", return_tensors="pt").input_ids
    output = model.generate(prompt, max_new_tokens=8, do_sample=False)
    assert output.shape[1] == prompt.shape[1] + 8
    assert tokenizer.decode(output[0]).startswith("def compute")


def _stage_run(name: str):
    import mlflow

    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("codemill")
    runs = client.search_runs([experiment.experiment_id], f"tags.`codemill.stage` = '{name}'")
    return client, runs


def test_pretrain_loss_falls_and_exports_a_plain_hf_model(
    workspace: Workspace, reference: dict[str, Any]
) -> None:
    losses = [entry["loss"] for entry in reference["curve"]]
    assert [entry["step"] for entry in reference["curve"]] == [2, 4, 6, 8]
    assert losses[0] > math.log(512) - 1.0  # random init: about ln(vocab)
    assert losses[-1] < losses[0] - 1.0
    assert reference["world_size"] == 2 and reference["zero_stage"] == 2
    assert reference["tokens_trained"] == STEPS * 4 * 2 * 2 * 64
    assert [entry["step"] for entry in reference["val_curve"]] == [4, 8]
    assert 0 < reference["val_bpb"] < reference["val_curve"][0]["val_bpb"]
    assert reference["run"]["mfu"] is None and reference["run"]["tokens_per_s"] > 0  # CPU: no MFU
    _generates(workspace.root / "models/pretrain")

    report = json.loads((workspace.root / "reports/pretrain.json").read_text())
    assert report["metrics"]["final_val_bpb"] == pytest.approx(reference["val_bpb"])
    assert report["metrics"]["tokens_trained"] == reference["tokens_trained"]
    assert report["files_in"] > 0 and report["bytes_out"] > 0

    client, runs = _stage_run("pretrain")
    run = runs[-1]  # the first pretrain run of this module is the reference
    history = client.get_metric_history(run.info.run_id, "loss")
    assert sorted(metric.step for metric in history) == [2, 4, 6, 8]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_bpb")] == [4, 8]
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "peak_mem_bytes", "val_loss"} <= set(run.data.metrics)
    artifacts = {item.path for item in client.list_artifacts(run.info.run_id, "pretrain")}
    assert {"pretrain/deepspeed_config.json", "pretrain/model_config.json"} <= artifacts


def test_killed_pretraining_resumes_and_reproduces_the_loss_curve(
    workspace: Workspace, reference: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    output = "models/resumed"
    monkeypatch.setenv(STOP_AFTER_ENV, "5")  # dies after step 5; the last checkpoint is step 3
    with pytest.raises(StageError, match="stopped"):
        run_pretrain(workspace, output)
    assert not (workspace.root / output).exists()
    assert (workspace.root / f"{output}.ckpt" / LATEST).read_text() == "step00000003"

    monkeypatch.delenv(STOP_AFTER_ENV)
    resumed = run_pretrain(workspace, output)
    assert resumed["run"]["resumed_from_step"] == 3
    for ours, theirs in zip(resumed["curve"], reference["curve"], strict=True):
        assert ours["step"] == theirs["step"]
        assert ours["loss"] == pytest.approx(theirs["loss"], abs=RESUME_TOLERANCE)
        assert ours["lr"] == pytest.approx(theirs["lr"], rel=1e-12)
    assert resumed["val_loss"] == pytest.approx(reference["val_loss"], abs=RESUME_TOLERANCE)

    from safetensors.torch import load_file

    ours = load_file(workspace.root / output / "model.safetensors")
    theirs = load_file(workspace.root / "models/pretrain/model.safetensors")
    assert ours.keys() == theirs.keys()
    assert all(torch.allclose(ours[name], theirs[name], atol=1e-5) for name in ours)


def test_anneal_continues_from_pretrain_with_lr_from_its_final_value_to_zero(
    workspace: Workspace, reference: dict[str, Any]
) -> None:
    inputs = ["models/pretrain", "data/tokenize", "data/clean"]
    every_step = workspace.params.train.model_copy(update={"log_every": 1})
    params = workspace.params.model_copy(update={"train": every_step})
    run_stage(anneal.STAGE, params, anneal.STAGE.resolve(inputs, "models/anneal"), "reports/anneal.json")
    summary = json.loads((workspace.root / "models/anneal/training.json").read_text())

    start_lr = reference["final_lr"]
    assert start_lr == pytest.approx(3e-4)  # pretrain decayed to min_lr
    assert summary["start_lr"] == start_lr and summary["final_lr"] == 0.0
    steps = workspace.params.anneal.steps
    assert [entry["lr"] for entry in summary["curve"]] == pytest.approx(
        [start_lr * (1 - step / steps) for step in range(steps)]
    )
    # Starts from the pretrained weights, not from scratch: the first loss is near pretraining's last.
    assert summary["curve"][0]["loss"] < reference["curve"][0]["loss"] - 1.0
    assert 0 < summary["hq_documents"] < summary["train_documents"]
    assert summary["val_bpb"] > 0
    _generates(workspace.root / "models/anneal")
    report = json.loads((workspace.root / "reports/anneal.json").read_text())
    assert report["stage"] == "anneal" and report["metrics"]["tokens_trained"] == summary["tokens_trained"]
