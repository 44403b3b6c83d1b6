"""The evaluate stage: every model of ``evaluate.models`` through :func:`evaluator.evaluate_model`.

Inputs: ``models`` (the folder of exported models) and ``holdout`` (``data/curate.holdout``, the held-out
repositories). Output ``io.output`` (``reports/eval``) gets one directory per model (see
``evaluator.py``); the scores go to ``<output>.json`` (``reports/eval.json``: ``{"models": {stage:
{metric: value, metric.ci_low, ...}}, "comparisons": {"pretrain->anneal": {metric: {difference,
ci_low, ci_high, significant, verdict}}}, "settings": {...}}``) and the DVC plots to
``<output>_plots/<metric>.json``.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from components.errors import StageError
from components.evaluate.evaluator import (
    Benchmark,
    HeldOut,
    ModelEvaluation,
    compare_models,
    evaluate_model,
    execution_settings,
    load_benchmarks,
    load_model,
    plot_records,
    read_held_out,
    write_model_outputs,
)
from components.params import StageContext
from components.params.evaluate import EvaluateConfig, EvaluateJob
from components.report import Artifact, StageReport, write_eval_report, write_json
from components.shards import atomic_output_dir
from components.stage_runner import StageIO

#: Metrics plotted per model (each benchmark's, and these).
PLOTTED = ("val.bpb", "line.exact_match")


def plotted_metrics(benchmarks: list[str]) -> list[str]:
    """The metrics of the DVC plots: per benchmark greedy pass@1 and gold bpb, then val bpb, line EM."""
    return [f"{name}.{metric}" for name in benchmarks for metric in ("pass_at_1", "gold_bpb")] + list(PLOTTED)


@dataclass(frozen=True)
class ModelTask:
    """One model to evaluate (picklable: it crosses into a worker process)."""

    stage: str
    model_dir: Path
    benchmarks: list[Benchmark]
    held_out: HeldOut
    config: EvaluateConfig
    seed: int

    def __call__(self) -> ModelEvaluation:
        """Load the model and evaluate it."""
        if not torch.cuda.is_available() and self.config.cpu_threads:
            torch.set_num_threads(self.config.cpu_threads)
        model, tokenizer = load_model(self.model_dir)
        chat = self.stage in self.config.chat_models
        benchmarks, held_out = self.benchmarks, self.held_out
        return evaluate_model(
            str(self.model_dir), model, tokenizer, benchmarks, held_out, self.config, self.seed, chat
        )


def _run_task(task: ModelTask) -> ModelEvaluation:
    return task()


def model_workers(config: EvaluateConfig, models: int) -> int:
    """Processes that evaluate models at once: ``evaluate.model_workers``, else one per core on CPU
    (each single-threaded) and one on a GPU."""
    wanted = config.model_workers or (1 if torch.cuda.is_available() else os.cpu_count() or 1)
    return max(1, min(wanted, models))


def evaluate_all(tasks: list[ModelTask], workers: int) -> list[ModelEvaluation]:
    """Every task's evaluation, in order: in this process when ``workers`` is 1, else in a pool of
    spawned processes (the same results: each model's evaluation depends only on its task)."""
    if workers == 1:
        return [task() for task in tasks]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        return list(pool.map(_run_task, tasks))


def run(job: EvaluateJob, context: StageContext, io: StageIO) -> StageReport:
    """Evaluate each model of ``evaluate.models`` on every benchmark and the held-out repositories."""
    config, seed = job.evaluate, context.seed
    models_dir = Path(io.input("models"))
    output = io.require_output("evaluate").rstrip("/")
    benchmarks = load_benchmarks(config.benchmarks)
    held_out = read_held_out(io.input("holdout"))
    report = StageReport(stage="evaluate")
    tasks = []
    for stage in config.models:
        model_dir = models_dir / stage
        if not (model_dir / "config.json").exists():
            raise StageError(f"{model_dir}: no exported model (evaluate.models lists {stage!r})")
        tasks.append(ModelTask(stage, model_dir, benchmarks, held_out, config, seed))
    done = evaluate_all(tasks, model_workers(config, len(tasks)))
    evaluations: dict[str, ModelEvaluation] = dict(zip(config.models, done, strict=True))
    for stage, evaluation in evaluations.items():
        report.files_in += 1
        for name, value in evaluation.scores.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                report.metrics[f"{stage}.{name}"] = float(value)
    models = {stage: evaluation.scores for stage, evaluation in evaluations.items()}
    with atomic_output_dir(output) as tmp:
        for stage, evaluation in evaluations.items():
            write_model_outputs(f"{tmp}/{stage}", evaluation)
            report.files_out += 1
    plots_dir = f"{output}_plots"
    with atomic_output_dir(plots_dir) as tmp:
        for metric, rows in plot_records(models, plotted_metrics([b.name for b in benchmarks])).items():
            write_json(f"{tmp}/{metric}.json", rows)
    summary_path = f"{output}.json"
    used = execution_settings(config, seed)
    used["held_out_documents"] = len(held_out.documents)
    comparisons = compare_models(evaluations, config, seed)
    write_eval_report(summary_path, models, used, comparisons)
    report.details = {"summary": summary_path, "settings": used, "comparisons": comparisons}
    report.params = {f"eval.{key}": value for key, value in flat_settings(used).items()}
    report.artifacts += [Artifact(output, "eval"), Artifact(summary_path), Artifact(plots_dir, "eval_plots")]
    return report


def flat_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings as MLflow params (the benchmark list as its names and files)."""
    flat = {key: value for key, value in settings.items() if key != "benchmarks"}
    for spec in settings.get("benchmarks", []):
        flat[f"benchmark.{spec['name']}"] = spec.get("file") or f"builtin:{spec.get('builtin')}"
        if spec.get("limit"):
            flat[f"benchmark.{spec['name']}.limit"] = spec["limit"]
    return flat
