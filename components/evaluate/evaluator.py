"""The evaluate stage: HumanEval pass@1 (greedy) and pass@k (sampled) in the sandbox, plus val bits per byte.

Inputs: ``models`` (the folder of exported models) and ``tokens`` (the tokenize output, for bits per byte).
Output: ``io.output`` (e.g. ``reports/eval``) gets one ``<stage>.jsonl`` of per-sample results per model;
the scores go to ``<output>.json`` (``reports/eval.json``, written and read by ``components/report.py``:
``{"models": {stage: {pass_at_1, bpb, ...}}, "settings": {...}}``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from components.errors import StageError
from components.evaluate.generate import Decoding, chat_prompt, extract_code, generate
from components.evaluate.humaneval import load_problems, score_samples, summarize
from components.evaluate.sandbox import isolation_in_force
from components.params import StageContext
from components.params.evaluate import EvaluateConfig, EvaluateJob
from components.report import Artifact, StageReport, metric_key, write_eval_report, write_json
from components.shards import atomic_output_dir
from components.stage_runner import StageIO
from components.tokens.dataset import TokenizedData
from components.tokens.tokenizer import IM_END
from components.train.validate import bits_per_byte, sequence_nats, spread_indices


def plot_records(models: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per model stage (``model``, then its numeric scores): the data of the DVC plot."""

    def numeric(value: Any) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool)

    return [
        {"model": stage, **{key: value for key, value in scores.items() if numeric(value)}}
        for stage, scores in models.items()
    ]


def settings(config: EvaluateConfig, seed: int, seq_len: int) -> dict[str, Any]:
    """Every decoding and execution setting the scores depend on, the sandbox isolation in force included."""
    return {
        **config.model_dump(),
        "seed": seed,
        "bpb_seq_len": seq_len,
        "greedy_decoding": {"temperature": 0.0, "max_new_tokens": config.max_new_tokens},
        "sandbox_isolation": isolation_in_force(config.isolation),
    }


def val_bpb(model: Any, data: TokenizedData, sequences: int, batch_size: int) -> float:
    """Bits per byte of ``model`` on up to ``sequences`` validation sequences spread over the val split."""
    device = next(model.parameters()).device
    nats, tokens = sequence_nats(
        model, data.val, spread_indices(len(data.val), sequences), batch_size, device
    )
    return bits_per_byte(nats, tokens, data.val_bytes_per_token)


def load_model(model_dir: Path) -> tuple[Any, Any]:
    """The exported model (fp32, on the GPU when there is one) and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model: Any = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
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


def run(job: EvaluateJob, context: StageContext, io: StageIO) -> StageReport:
    """Evaluate each model of ``evaluate.models`` on HumanEval (sandboxed) and val bits per byte."""
    config, seed = job.evaluate, context.seed
    models_dir = Path(io.input("models"))
    data = TokenizedData(io.input("tokens"), job.seq_len, seed)
    output = io.require_output("evaluate").rstrip("/")
    problems = load_problems()
    if config.problems_limit is not None:
        problems = dict(list(problems.items())[: config.problems_limit])
    report = StageReport(stage="evaluate")
    if not torch.cuda.is_available() and config.cpu_threads:
        torch.set_num_threads(config.cpu_threads)
    all_results: dict[str, list[dict]] = {}
    models: dict[str, dict[str, Any]] = {}
    for stage in config.models:
        model_dir = models_dir / stage
        if not (model_dir / "config.json").exists():
            raise StageError(f"{model_dir}: no exported model (evaluate.models lists {stage!r})")
        model, tokenizer = load_model(model_dir)
        results, scores = evaluate_model(stage, model, tokenizer, problems, config, seed)
        scores["bpb"] = val_bpb(model, data, config.bpb_sequences, config.batch_size)
        models[stage] = {metric_key(name): value for name, value in scores.items()}
        all_results[stage] = results
        report.files_in += 1
        for name, value in models[stage].items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                report.metrics[f"{stage}.{name}"] = float(value)
    with atomic_output_dir(output) as tmp:
        for stage, results in all_results.items():
            lines = "".join(json.dumps(result, sort_keys=True) + "\n" for result in results)
            (Path(tmp) / f"{stage}.jsonl").write_text(lines, encoding="utf-8")
            report.files_out += 1
    summary_path = f"{output}.json"
    used = settings(config, seed, job.seq_len)
    write_eval_report(summary_path, models, used)
    write_json(f"{output}_scores.json", plot_records(models))
    report.details = {"summary": summary_path, "settings": used}
    report.params = {f"eval.{key}": value for key, value in used.items()}
    report.artifacts += [Artifact(output, "eval"), Artifact(summary_path)]
    return report
