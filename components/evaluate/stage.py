"""The evaluate stage: HumanEval pass@1 (greedy) and pass@k (sampled) in the sandbox, plus val bits per byte.

Inputs: ``io.inputs[0]`` the models folder (default ``evaluate.models_dir``), ``io.inputs[1]`` the tokenize
output (default ``evaluate.data_dir``). Output: ``io.output`` (e.g. ``reports/eval``) gets one
``<stage>.jsonl`` of per-sample results per model; the summary goes to ``<output>.json``
(``reports/eval.json``: ``{"models": {stage: scores}, "settings": {...}}``, read by the register stage).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from components.errors import StageError
from components.evaluate.config import EvaluateConfig
from components.evaluate.generate import Decoding, chat_prompt, extract_code, generate
from components.evaluate.humaneval import load_problems, score_samples, summarize
from components.report import StageReport
from components.shards import atomic_output_dir
from components.tokenize.tokenizer import IM_END

if TYPE_CHECKING:  # components.config imports components.evaluate.config: no runtime import back
    from components.config import Params
    from components.stage import StageIO

DEFAULT_OUTPUT = "reports/eval"


def metric_name(name: str) -> str:
    """``pass@1`` -> ``pass_at_1`` (the MLflow key form, as the register stage reads it)."""
    return name.replace("@", "_at_")


def plot_records(models: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per model stage (``model``, then its numeric scores): the data of the DVC plot."""

    def numeric(value: Any) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool)

    return [
        {
            "model": stage,
            **{key: value for key, value in scores.items() if numeric(value) and "_at_" not in key},
        }
        for stage, scores in models.items()
    ]


def settings(config: EvaluateConfig, seed: int, seq_len: int) -> dict[str, Any]:
    """Every decoding and execution setting the scores depend on."""
    return {
        **config.model_dump(),
        "seed": seed,
        "bpb_seq_len": seq_len,
        "greedy_decoding": {"temperature": 0.0, "max_new_tokens": config.max_new_tokens},
    }


@torch.no_grad()
def val_bpb(model: Any, data_dir: Path, seq_len: int, seed: int, sequences: int, batch_size: int) -> float:
    """Bits per byte of ``model`` on up to ``sequences`` validation sequences spread over the val split.

    Same measure as training's validation (``next_token_loss`` summed, bytes per token of the split).
    """
    from components.tokenize.dataset import TokenDataset, read_index
    from components.train.engine import next_token_loss

    stats = read_index(data_dir)["splits"]["val"]
    data = TokenDataset(data_dir, "val", seq_len, seed)
    count = min(sequences, len(data))
    picked = [index * len(data) // count for index in range(count)]
    model.eval()
    nats, tokens = 0.0, 0
    for first in range(0, count, batch_size):
        batch = torch.from_numpy(np.stack([data.sequence(i) for i in picked[first : first + batch_size]]))
        nats += next_token_loss(model, batch.to(next(model.parameters()).device), reduction="sum").item()
        tokens += int((batch[:, 1:] != -100).sum())
    return nats / (math.log(2) * tokens * stats["bytes"] / stats["tokens"])


def load_model(model_dir: Path) -> tuple[Any, Any]:
    """The exported model (fp32, on the GPU when there is one) and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    if torch.cuda.is_available():
        model = model.to("cuda")
    return model, AutoTokenizer.from_pretrained(str(model_dir))


def evaluate_model(
    stage: str, model: Any, tokenizer: Any, problems: dict[str, dict], config: EvaluateConfig, seed: int
) -> tuple[list[dict], dict[str, Any]]:
    """Generate and score HumanEval completions of one model: per-sample results and the scores."""
    chat = stage in config.chat_models
    task_ids = list(problems)
    prompts = [problems[task]["prompt"] for task in task_ids]
    if chat:
        prompts = [chat_prompt(tokenizer, prompt) for prompt in prompts]
    stop = () if chat else tuple(config.stop)
    end_tokens = (IM_END,) if chat else ()
    runs = []
    if config.greedy:
        runs.append(("greedy", Decoding(config.max_new_tokens, stop=stop), task_ids, prompts))
    if config.sampling:
        sampled = Decoding(config.max_new_tokens, config.temperature, config.top_p, stop)
        repeated = [i for i in range(len(task_ids)) for _ in range(config.n_samples)]
        runs.append(("sample", sampled, [task_ids[i] for i in repeated], [prompts[i] for i in repeated]))
    results, scores = [], {}
    for mode, decoding, tasks, mode_prompts in runs:
        texts = generate(model, tokenizer, mode_prompts, decoding, config.batch_size, seed, end_tokens)
        if chat:
            texts = [extract_code(text) for text in texts]
        scored = score_samples(
            [{"task_id": task, "completion": text} for task, text in zip(tasks, texts, strict=True)],
            problems,
            config,
        )
        summary = summarize(scored, [1] if mode == "greedy" else config.k)
        if mode == "greedy":
            scores["pass@1"] = summary["pass@1"]
        else:
            scores.update({f"sampled_{name}": value for name, value in summary.items() if "@" in name})
        results += [{"model": stage, "mode": mode, **result} for result in scored]
    scores["problems"] = len(task_ids)
    scores["chat_template"] = chat
    return results, scores


def run(params: Params, io: StageIO) -> StageReport:
    """Evaluate each model of ``evaluate.models`` on HumanEval (sandboxed) and val bits per byte."""
    import mlflow

    config = params.evaluate
    models_dir = Path(io.inputs[0] if io.inputs else config.models_dir)
    data_dir = Path(io.inputs[1] if len(io.inputs) > 1 else config.data_dir)
    output = (io.output or DEFAULT_OUTPUT).rstrip("/")
    problems = load_problems()
    if config.problems_limit is not None:
        problems = dict(list(problems.items())[: config.problems_limit])
    seed, seq_len = params.project.seed, params.model.seq_len
    report = StageReport(stage="evaluate")
    if not torch.cuda.is_available() and config.cpu_threads:
        torch.set_num_threads(config.cpu_threads)
    all_results: dict[str, list[dict]] = {}
    summary: dict[str, Any] = {"models": {}, "settings": settings(config, seed, seq_len)}
    for stage in config.models:
        model_dir = models_dir / stage
        if not (model_dir / "config.json").exists():
            raise StageError(f"{model_dir}: no exported model (evaluate.models lists {stage!r})")
        model, tokenizer = load_model(model_dir)
        results, scores = evaluate_model(stage, model, tokenizer, problems, config, seed)
        if (data_dir / "index.json").exists():
            scores["bpb"] = val_bpb(model, data_dir, seq_len, seed, config.bpb_sequences, config.batch_size)
        for name, value in list(scores.items()):
            if "@" in name:
                scores[metric_name(name)] = value
        summary["models"][stage] = scores
        all_results[stage] = results
        report.files_in += 1
        for name, value in scores.items():
            if isinstance(value, int | float) and not isinstance(value, bool) and "@" not in name:
                report.metrics[f"{stage}.{name}"] = float(value)
    with atomic_output_dir(output) as tmp:
        for stage, results in all_results.items():
            lines = "".join(json.dumps(result, sort_keys=True) + "\n" for result in results)
            (Path(tmp) / f"{stage}.jsonl").write_text(lines, encoding="utf-8")
            report.files_out += 1
    summary_path = Path(f"{output}.json")
    summary_path.parent.mkdir(parents=True, exist_ok=True)
    summary_path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    plot_path = Path(f"{output}_scores.json")
    plot_path.write_text(json.dumps(plot_records(summary["models"]), indent=2) + "\n", encoding="utf-8")
    report.details = {"summary": str(summary_path), "settings": summary["settings"]}
    if mlflow.active_run() is not None:
        mlflow.log_params({f"eval.{key}": json.dumps(value) for key, value in summary["settings"].items()})
        mlflow.log_artifacts(output, artifact_path="eval")
        mlflow.log_artifact(str(summary_path))
    return report
