"""Evaluating one model, any checkpoint: generate, score (in the sandbox), smooth metrics, intervals.

The same code serves the evaluate stage (``models/<stage>`` for each of ``evaluate.models``) and
``codemill evaluate --model PATH|models:/NAME@ALIAS``. Per model it writes to its own directory:

- ``<benchmark>.samples.jsonl``: the generations (benchmark, task_id, mode, completion), and
  ``generation.json``: every decoding setting, the seed and the model; scoring them again needs no model
  (``codemill eval-samples DIR/humaneval.samples.jsonl --benchmark humaneval``);
- ``<benchmark>.results.jsonl``: each sample's sandbox outcome;
- ``lines.jsonl``: the next-line completions and whether they match;
- ``scores.json``: the flat scores with their intervals (as in ``reports/eval.json``).

Scores (flat keys, MLflow metric names): ``<benchmark>.pass_at_1`` (greedy),
``<benchmark>.sampled_pass_at_k``, ``<benchmark>.gold_bpb``, ``val.bpb`` and ``val.<language>.bpb``
(held-out repositories), ``line.exact_match``; each with ``.ci_low``/``.ci_high`` (bootstrap over
problems, documents or lines) and ``.n``. A benchmark whose language has no toolchain here gets
``<benchmark>.skipped`` (the reason) and no pass@k.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from components.benchmarks import Problem, load_benchmark
from components.evaluate.generate import (
    Decoding,
    auto_batch_size,
    chat_prompt,
    extract_code,
    fim_prompt,
    generate,
)
from components.evaluate.likelihood import (
    complete_lines,
    continuation_nats,
    document_nats,
    line_tasks,
    same_line,
)
from components.evaluate.sandbox import isolation_in_force
from components.evaluate.scoring import pass_at_k_measure, score_samples, summarize
from components.evaluate.stats import Measure, paired_difference, scored
from components.params.evaluate import BenchmarkSpec, EvaluateConfig
from components.report import write_json
from components.shards import atomic_output_dir, iter_tables
from components.tokens.packing import unit_hash
from components.tokens.tokenizer import IM_END

GREEDY, SAMPLE = "greedy", "sample"


@dataclass(frozen=True)
class Benchmark:
    """A configured benchmark and its problems."""

    spec: BenchmarkSpec
    problems: tuple[Problem, ...]

    @property
    def name(self) -> str:
        """The benchmark's name (its metric prefix)."""
        return self.spec.name

    def by_id(self) -> dict[str, Problem]:
        """Its problems by task id."""
        return {problem.task_id: problem for problem in self.problems}


@dataclass(frozen=True)
class HeldOut:
    """Held-out documents, in their fixed order: (id, language, content)."""

    documents: tuple[tuple[str, str, str], ...] = ()


@dataclass
class ModelEvaluation:
    """Everything one model's evaluation produced."""

    scores: dict[str, Any] = field(default_factory=dict)
    measures: dict[str, Measure] = field(default_factory=dict)
    samples: dict[str, list[dict]] = field(default_factory=dict)
    results: dict[str, list[dict]] = field(default_factory=dict)
    lines: list[dict] = field(default_factory=list)
    generation: dict[str, Any] = field(default_factory=dict)


def load_benchmarks(specs: Sequence[BenchmarkSpec], names: Sequence[str] | None = None) -> list[Benchmark]:
    """The benchmarks of ``specs`` (only ``names`` when given; an unknown name is a ValueError)."""
    known = {spec.name: spec for spec in specs}
    if names:
        unknown = [name for name in names if name not in known]
        if unknown:
            raise ValueError(f"unknown benchmark(s) {unknown}; evaluate.benchmarks has {sorted(known)}")
        specs = [known[name] for name in names]
    return [Benchmark(spec, load_benchmark(spec)) for spec in specs]


def read_held_out(path: str | None) -> HeldOut:
    """The held-out documents of a shard directory (``data/curate.holdout``), in a fixed order (languages
    in turn, each by a hash of the ids), or none when ``path`` is None or holds no shards."""
    if path is None or not Path(path).is_dir() or not any(Path(path).glob("*.parquet")):
        return HeldOut()
    rows = [
        row for table in iter_tables(path, columns=["id", "lang", "content"]) for row in table.to_pylist()
    ]
    rows.sort(key=lambda row: (unit_hash("eval-order", row["id"]), row["id"]))
    by_language: dict[str, list[dict]] = {}
    for row in rows:
        by_language.setdefault(row["lang"] or "", []).append(row)
    # Languages take turns, so a token budget (evaluate.holdout_tokens) reaches every language.
    turns = itertools.zip_longest(*(by_language[lang] for lang in sorted(by_language)))
    ordered = [row for turn in turns for row in turn if row is not None]
    return HeldOut(tuple((row["id"], row["lang"], row["content"]) for row in ordered))


def load_model(model_dir: Path, tokenizer_dir: Path | None = None) -> tuple[Any, Any]:
    """An exported model (fp32 on CPU; bf16 on the GPU when there is one) and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    on_gpu = torch.cuda.is_available()
    dtype = torch.bfloat16 if on_gpu else torch.float32
    model: Any = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype)
    if on_gpu:
        model = model.to("cuda")
    return model, AutoTokenizer.from_pretrained(str(tokenizer_dir or model_dir))


def batch_size(model: Any, config: EvaluateConfig, sequence_tokens: int) -> int:
    """``evaluate.batch_size``, or the one chosen from memory for ``auto``."""
    if config.batch_size == "auto":
        return auto_batch_size(model, sequence_tokens)
    return config.batch_size


def model_prompt(problem: Problem, tokenizer: Any, chat: bool) -> str:
    """What the model is given: the FIM prompt of an infilling problem, else the prompt (through the
    chat template for an instruct model)."""
    if problem.infilling:
        return fim_prompt(problem.prompt, problem.suffix)
    return chat_prompt(tokenizer, problem.prompt, problem.language) if chat else problem.prompt


def decodings(benchmark: Benchmark, config: EvaluateConfig) -> list[tuple[str, Decoding, int]]:
    """(mode, decoding without stop sequences, samples per problem) of each generation run."""
    runs = []
    if config.greedy:
        runs.append((GREEDY, Decoding(config.max_new_tokens), 1))
    if config.sampling and benchmark.spec.sampled:
        runs.append(
            (SAMPLE, Decoding(config.max_new_tokens, config.temperature, config.top_p), config.n_samples)
        )
    return runs


def generate_samples(
    model: Any, tokenizer: Any, benchmark: Benchmark, config: EvaluateConfig, seed: int, chat: bool
) -> tuple[list[dict], list[dict]]:
    """The completions of one benchmark (greedy, then sampled) and the decoding of each run.

    Problems with the same stop sequences generate together; a chat model's reply is cut at its end
    token and its code block kept (no stop sequences: they would cut the reply's prose).
    """
    samples: list[dict] = []
    settings: list[dict] = []
    size = batch_size(model, config, int(model.config.max_position_embeddings))
    for mode, decoding, repeats in decodings(benchmark, config):
        groups: dict[tuple[str, ...], list[Problem]] = {}
        for problem in benchmark.problems:
            use_chat = chat and not problem.infilling
            groups.setdefault(() if use_chat else problem.stop, []).append(problem)
        for stop, problems in groups.items():
            chosen = [problem for problem in problems for _ in range(repeats)]
            prompts = [model_prompt(problem, tokenizer, chat) for problem in chosen]
            run = Decoding(decoding.max_new_tokens, decoding.temperature, decoding.top_p, stop)
            end_tokens = (IM_END,) if chat else ()
            texts = generate(model, tokenizer, prompts, run, size, seed, end_tokens)
            for problem, text in zip(chosen, texts, strict=True):
                completion = extract_code(text) if chat and not problem.infilling else text
                samples.append(
                    {
                        "benchmark": benchmark.name,
                        "task_id": problem.task_id,
                        "mode": mode,
                        "completion": completion,
                    }
                )
            settings.append(
                {
                    "benchmark": benchmark.name,
                    "mode": mode,
                    "problems": len(problems),
                    "samples_per_problem": repeats,
                    "temperature": run.temperature,
                    "top_p": run.top_p,
                    "max_new_tokens": run.max_new_tokens,
                    "stop": list(run.stop),
                    "end_tokens": list(end_tokens),
                    "chat_template": chat,
                    "batch_size": size,
                    "seed": seed,
                }
            )
    return samples, settings


def benchmark_scores(
    benchmark: Benchmark, results: Sequence[dict], config: EvaluateConfig
) -> tuple[dict[str, Any], list[Measure]]:
    """pass@1 (greedy) and sampled pass@k of one benchmark's scored samples, as measures; outcome
    counts and a ``skipped`` reason as plain scores."""
    name, plain, measures = benchmark.name, {}, []
    for mode, ks, prefix in ((GREEDY, [1], "pass_at_"), (SAMPLE, config.k, "sampled_pass_at_")):
        chosen = [result for result in results if result["mode"] == mode]
        if not chosen:
            continue
        summary = summarize(chosen, ks)
        if "skipped" in summary:
            plain[f"{name}.skipped"] = summary["skipped"]
            continue
        for k in ks:
            measure = pass_at_k_measure(f"{name}.{prefix}{k}", chosen, k)
            if measure is not None:
                measures.append(measure)
        if mode == GREEDY:
            plain.update({f"{name}.outcome.{kind}": float(n) for kind, n in summary["outcomes"].items()})
    return plain, measures


def gold_bpb(model: Any, tokenizer: Any, benchmark: Benchmark, size: int) -> Measure | None:
    """Bits per byte of the gold answers given their prompts (None when the benchmark has none)."""
    problems = [problem for problem in benchmark.problems if problem.gold]
    if not problems:
        return None
    pairs = [(model_prompt(problem, tokenizer, chat=False), problem.gold or "") for problem in problems]
    scored_pairs = continuation_nats(model, tokenizer, pairs, size)
    return Measure.bits_per_byte(
        f"{benchmark.name}.gold_bpb",
        [problem.task_id for problem in problems],
        [nats for nats, _ in scored_pairs],
        [nbytes for _, nbytes in scored_pairs],
    )


def held_out_bpb(
    model: Any, tokenizer: Any, held_out: HeldOut, config: EvaluateConfig, size: int
) -> list[Measure]:
    """``val.<language>.bpb`` per language, each on an equal share of ``evaluate.holdout_tokens`` (one large
    file cannot take the whole budget), and ``val.bpb`` over all the documents scored."""
    languages = sorted({lang for _, lang, _ in held_out.documents})
    if not languages:
        return []
    share = max(1, config.holdout_tokens // len(languages))
    scored: list[tuple[tuple[str, str, str], tuple[float, int]]] = []
    per_language = []
    for language in languages:
        documents = [doc for doc in held_out.documents if doc[1] == language]
        nats = document_nats(model, tokenizer, [content for _, _, content in documents], size, share)
        rows = list(zip(documents, nats, strict=False))
        scored += rows
        per_language.append(
            Measure.bits_per_byte(
                f"val.{language}.bpb",
                [doc[0] for doc, _ in rows],
                [n for _, (n, _) in rows],
                [b for _, (_, b) in rows],
            )
        )
    overall = Measure.bits_per_byte(
        "val.bpb", [doc[0] for doc, _ in scored], [n for _, (n, _) in scored], [b for _, (_, b) in scored]
    )
    return [overall, *per_language]


def line_completion(
    model: Any, tokenizer: Any, held_out: HeldOut, config: EvaluateConfig, seed: int, size: int
) -> tuple[Measure | None, list[dict]]:
    """Next-line exact match on held-out documents, and each completion."""
    tasks = line_tasks(
        [(doc_id, content) for doc_id, _, content in held_out.documents], config.line_completions, seed
    )
    if not tasks:
        return None, []
    predictions = complete_lines(model, tokenizer, tasks, config.line_max_new_tokens, size, seed)
    rows: list[dict[str, Any]] = [
        {
            "task_id": task.task_id,
            "target": task.target,
            "prediction": prediction,
            "match": same_line(prediction, task.target),
        }
        for task, prediction in zip(tasks, predictions, strict=True)
    ]
    measure = Measure.mean(
        "line.exact_match", [row["task_id"] for row in rows], [float(row["match"]) for row in rows]
    )
    return measure, rows


def evaluate_model(
    model_ref: str,
    model: Any,
    tokenizer: Any,
    benchmarks: Sequence[Benchmark],
    held_out: HeldOut,
    config: EvaluateConfig,
    seed: int,
    chat: bool = False,
) -> ModelEvaluation:
    """Evaluate one model: generation, sandbox scoring, gold and held-out bits per byte, line completion,
    and every score's bootstrap interval."""
    evaluation = ModelEvaluation()
    settings: list[dict] = []
    size = batch_size(model, config, int(model.config.max_position_embeddings))
    measures: list[Measure] = []
    for benchmark in benchmarks:
        samples, runs = generate_samples(model, tokenizer, benchmark, config, seed, chat)
        settings += runs
        evaluation.samples[benchmark.name] = samples
        results = score_samples(samples, benchmark.by_id(), config) if samples else []
        evaluation.results[benchmark.name] = results
        plain, pass_measures = benchmark_scores(benchmark, results, config)
        evaluation.scores.update(plain)
        measures += pass_measures
        if (gold := gold_bpb(model, tokenizer, benchmark, size)) is not None:
            measures.append(gold)
        evaluation.scores[f"{benchmark.name}.problems"] = float(len(benchmark.problems))
    measures += held_out_bpb(model, tokenizer, held_out, config, size)
    line_measure, evaluation.lines = line_completion(model, tokenizer, held_out, config, seed, size)
    if line_measure is not None:
        measures.append(line_measure)
    for measure in measures:
        evaluation.measures[measure.name] = measure
        evaluation.scores.update(scored(measure, config.bootstrap_resamples, config.confidence, seed))
    evaluation.scores["chat_template"] = chat
    evaluation.generation = {
        "model": model_ref,
        "seed": seed,
        "device": str(next(model.parameters()).device),
        "dtype": str(next(model.parameters()).dtype),
        "runs": settings,
    }
    return evaluation


def execution_settings(config: EvaluateConfig, seed: int) -> dict[str, Any]:
    """Every decoding and execution setting the scores depend on, the sandbox isolation in force included."""
    return {
        **config.model_dump(mode="json"),
        "seed": seed,
        "sandbox_isolation": isolation_in_force(config.isolation),
    }


def write_model_outputs(directory: str, evaluation: ModelEvaluation) -> None:
    """One model's generations, results, line completions and scores into ``directory`` (atomically)."""

    def jsonl(rows: Sequence[dict]) -> str:
        return "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows)

    with atomic_output_dir(directory) as tmp:
        out = Path(tmp)
        for name, samples in evaluation.samples.items():
            (out / f"{name}.samples.jsonl").write_text(jsonl(samples), encoding="utf-8")
            (out / f"{name}.results.jsonl").write_text(jsonl(evaluation.results[name]), encoding="utf-8")
        (out / "lines.jsonl").write_text(jsonl(evaluation.lines), encoding="utf-8")
        write_json(out / "generation.json", evaluation.generation)
        write_json(out / "scores.json", evaluation.scores)


def compare_models(
    evaluations: dict[str, ModelEvaluation], config: EvaluateConfig, seed: int
) -> dict[str, dict[str, dict[str, Any]]]:
    """Each model against the one before it (``pretrain -> anneal``...): the paired bootstrap of every
    score both have on the same items (significant when its interval excludes 0)."""
    names = list(evaluations)
    comparisons: dict[str, dict[str, dict[str, Any]]] = {}
    for before, after in itertools.pairwise(names):
        pair: dict[str, dict[str, Any]] = {}
        for metric, measure in evaluations[before].measures.items():
            other = evaluations[after].measures.get(metric)
            if other is not None and other.item_ids == measure.item_ids:
                pair[metric] = paired_difference(
                    measure, other, config.bootstrap_resamples, config.confidence, seed
                )
        comparisons[f"{before}->{after}"] = pair
    return comparisons


def plot_records(
    models: dict[str, dict[str, Any]], metrics: Sequence[str]
) -> dict[str, list[dict[str, Any]]]:
    """Per metric (``humaneval.pass_at_1``...), one record per model with its value and interval: the
    data of the DVC plots (``reports/eval_plots/<metric>.json``)."""
    plots: dict[str, list[dict[str, Any]]] = {}
    for metric in metrics:
        rows = [
            {
                "model": model,
                "score": scores[metric],
                "ci_low": scores[f"{metric}.ci_low"],
                "ci_high": scores[f"{metric}.ci_high"],
            }
            for model, scores in models.items()
            if metric in scores
        ]
        if rows:
            plots[metric] = rows
    return plots


def evaluate_checkpoint(
    model_ref: str,
    model_dir: Path,
    tokenizer_dir: Path,
    config: EvaluateConfig,
    seed: int,
    benchmark_names: Sequence[str],
    holdout: str | None,
    chat: bool,
    output: str,
) -> dict[str, Any]:
    """``codemill evaluate``: evaluate one exported model on (some of) the configured benchmarks and the
    held-out documents; writes its outputs and ``<output>/eval.json``; returns the scores."""
    if not torch.cuda.is_available() and config.cpu_threads:
        torch.set_num_threads(config.cpu_threads)
    benchmarks = load_benchmarks(config.benchmarks, benchmark_names)
    model, tokenizer = load_model(model_dir, tokenizer_dir)
    evaluation = evaluate_model(
        model_ref, model, tokenizer, benchmarks, read_held_out(holdout), config, seed, chat
    )
    write_model_outputs(output, evaluation)
    settings = {
        **execution_settings(config, seed),
        "model": model_ref,
        "benchmarks_run": [b.name for b in benchmarks],
    }
    write_json(f"{output}/eval.json", {"models": {model_ref: evaluation.scores}, "settings": settings})
    return evaluation.scores
