"""The one run function of every training stage: launch the ranks, then report what they trained."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components.params import StageContext, TrainingJob
from components.report import StageReport
from components.stage_runner import Input, StageIO
from components.tokens.dataset import read_index
from components.train.launch import launch

#: The inputs training stages share, by what they must be.
TOKENS = Input("tokens", "tokens")
DOCUMENTS = Input("documents")


def model_input(stage: str) -> Input:
    """The exported model of ``stage`` as an input (``models/<stage>``, with its ``training.json``)."""
    return Input(stage, "model")


def run_training(job: TrainingJob, context: StageContext, io: StageIO) -> StageReport:
    """Train the job's stage with DeepSpeed on all ranks and export a Hugging Face checkpoint."""
    summary = launch(job, context, io)
    return training_report(job.stage, summary, read_index(io.input("tokens")), io.require_output(job.stage))


def training_report(stage: str, summary: dict[str, Any], index: dict[str, Any], output: str) -> StageReport:
    """The stage report of a training stage: training split in, exported model files out, final metrics."""
    train_split = index["splits"]["train"]
    files = sorted(path for path in Path(output).iterdir() if path.is_file())
    report = StageReport(
        stage=stage,
        files_in=train_split["documents"],
        files_out=len(files),
        bytes_in=train_split["bytes"],
        bytes_out=sum(path.stat().st_size for path in files),
    )
    report.metrics = {
        "tokens_trained": summary["tokens_trained"],
        "final_val_loss": summary["val_loss"],
        "final_val_bpb": summary["val_bpb"],
        "mean_tokens_per_s": summary["tokens_per_s"],
        "params": summary["params"],
    }
    if summary.get("mfu") is not None:
        report.metrics["mean_mfu"] = summary["mfu"]
    extra = summary.get("report") or {}
    report.metrics.update(extra.get("metrics") or {})
    report.merge_drops(extra.get("drops") or {})
    report.details = {
        key: value for key, value in summary.items() if key not in ("curve", "val_curve", "report")
    }
    return report
