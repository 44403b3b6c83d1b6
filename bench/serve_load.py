"""Serving under load: ``codemill serve`` (a real uvicorn process) driven by 1, 4 and 16 concurrent
clients, with batching on and off, for the fp32 model and its int8 variant, in one run.

Per variant, PanGu-Coder2's table (their table 4): weight memory, load time, latency p50/p99, tokens/s,
pass@1 and gold bits per byte on HumanEval (greedy, the first ``--problems`` problems, in the sandbox).
Per setting: requests/s, generated tokens/s, p50/p99 latency; batching on vs off as a ratio.

    python bench/serve_load.py [--model models/align] [--requests 48] [--max-tokens 32] [--no-write]

Without ``--model`` (or when the folder is missing) a model of the CPU profile's size (``params.model``)
with a tokenizer trained on a few standard-library files is used: latency and memory are what matter
here, and a random model generates its full ``max_tokens``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from benchdoc import publish  # noqa: E402

SECTION = "## Serving under load"
CONCURRENCY = (1, 4, 16)
HUMANEVAL = "humaneval"
PROMPTS = [f"def {name}(values):\n    " for name in ("total", "largest", "mean", "reverse", "unique", "sort")]


def fallback_checkpoint(folder: Path) -> Path:
    """A CPU-profile-sized model with a tokenizer trained on standard-library files."""
    import sysconfig

    import torch

    from components.params import load_params
    from components.tokens.tokenizer import to_transformers, train_tokenizer
    from components.train.model import build_model, hf_config

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts = [path.read_text(encoding="utf-8") for path in sorted(stdlib.glob("[a-m]*.py"))[:40]]
    params = load_params(str(PROJECT_ROOT / "params.yaml"))
    tokenizer = to_transformers(train_tokenizer(texts, params.tokenize.vocab_size, 2))
    torch.manual_seed(0)
    build_model(hf_config(params.model, len(tokenizer), tokenizer.eos_token_id)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def variant_checkpoints(model: Path, scratch: Path) -> dict[str, Path]:
    """``{"fp32": model, "int8": its torchao int8 copy}`` as checkpoint folders."""
    from components.serve.quantize import quantized_checkpoint

    quantized, tokenizer = quantized_checkpoint(model, model, "int8")
    quantized.save_pretrained(scratch / "int8")
    tokenizer.save_pretrained(scratch / "int8")
    return {"fp32": model, "int8": scratch / "int8"}


def quality(folder: Path, problems: int) -> dict[str, float]:
    """Weights, load time, HumanEval pass@1 and gold bpb of one checkpoint (in this process)."""
    from components.evaluate.evaluator import HeldOut, evaluate_model, load_benchmarks
    from components.params import load_params
    from components.serve.models import load_path, weight_bytes

    started = time.perf_counter()
    loaded = load_path(str(folder))
    load_s = time.perf_counter() - started
    config = load_params(str(PROJECT_ROOT / "params.yaml")).evaluate
    specs = [
        spec.model_copy(update={"limit": problems}) for spec in config.benchmarks if spec.name == "humaneval"
    ]
    config = config.model_copy(update={"benchmarks": specs, "sampling": False})
    evaluation = evaluate_model(
        str(folder), loaded.model, loaded.tokenizer, load_benchmarks(specs), HeldOut(), config, seed=0
    )
    scores = evaluation.scores
    return {
        "weight_mb": weight_bytes(loaded.model) / 1e6,
        "load_s": load_s,
        "pass_at_1": float(scores.get("humaneval.pass_at_1", 0.0)),
        "gold_bpb": float(scores.get("humaneval.gold_bpb", float("nan"))),
    }


def start_server(folder: Path, batch: int, scratch: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``codemill serve --model FOLDER`` with ``serve.max_batch_size = batch``; waits until it answers."""
    from components.train.launch import free_port

    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params["serve"].update({"max_batch_size": batch, "max_in_flight": 256})
    path = scratch / f"params-{batch}.yaml"
    path.write_text(yaml.safe_dump(params))
    port = free_port()
    command = [sys.executable, "-m", "components.cli", "--params", str(path), "serve", "--model", str(folder)]
    log = open(scratch / f"serve-{folder.name}-{batch}.log", "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen([*command, "--port", str(port)], cwd=PROJECT_ROOT, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"codemill serve exited: see {log.name}")
        try:
            if requests.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise SystemExit(f"codemill serve did not answer: see {log.name}")


def drive(url: str, clients: int, total: int, max_tokens: int) -> dict[str, float]:
    """``total`` greedy completions from ``clients`` threads: requests/s, tokens/s, p50/p99 latency."""
    latencies: list[float] = []
    tokens: list[int] = []

    def one(index: int) -> None:
        body = {"prompt": PROMPTS[index % len(PROMPTS)], "max_tokens": max_tokens, "temperature": 0}
        started = time.perf_counter()
        answer = requests.post(f"{url}/v1/completions", json=body, timeout=300)
        answer.raise_for_status()
        latencies.append(time.perf_counter() - started)
        tokens.append(answer.json()["usage"]["completion_tokens"])

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(total)))
    wall = time.perf_counter() - started
    ordered = sorted(latencies)
    return {
        "requests_per_s": total / wall,
        "tokens_per_s": sum(tokens) / wall,
        "p50_s": statistics.median(ordered),
        "p99_s": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
    }


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def table_row(*cells: object) -> str:
    """One markdown table row."""
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def markdown(
    variants: dict[str, dict], loads: dict[tuple[str, int, int], dict], command: str, info: str
) -> str:
    """The docs/benchmarks.md section: the per-variant table and the per-setting load table."""
    head = ["variant", "weights MB", "load s", "p50 s (1 client)", "p99 s (16)", "tokens/s (16)"]
    lines = [SECTION, "", f"`{command}` ({info})", "", table_row(*head, "HumanEval pass@1", "gold bpb")]
    lines.append(table_row(*["---"] * 8))
    for name, row in variants.items():
        one, many = loads[(name, 8, 1)], loads[(name, 8, 16)]
        lines.append(
            table_row(
                name,
                f"{row['weight_mb']:.1f}",
                f"{row['load_s']:.2f}",
                f"{one['p50_s']:.3f}",
                f"{many['p99_s']:.3f}",
                f"{many['tokens_per_s']:.0f}",
                f"{row['pass_at_1']:.3f}",
                f"{row['gold_bpb']:.3f}",
            )
        )
    head = ["variant", "batching", "clients", "requests/s", "tokens/s", "p50 s", "p99 s", "tokens/s vs off"]
    lines += ["", table_row(*head), table_row(*["---"] * 8)]
    for (name, batch, clients), row in loads.items():
        off = loads.get((name, 1, clients))
        ratio = f"{row['tokens_per_s'] / off['tokens_per_s']:.2f}x" if off and batch != 1 else ""
        lines.append(
            table_row(
                name,
                "on (8)" if batch != 1 else "off",
                clients,
                f"{row['requests_per_s']:.2f}",
                f"{row['tokens_per_s']:.0f}",
                f"{row['p50_s']:.3f}",
                f"{row['p99_s']:.3f}",
                ratio,
            )
        )
    weights = variants["int8"]["weight_mb"] / variants["fp32"]["weight_mb"]
    speed = loads[("int8", 8, 16)]["tokens_per_s"] / loads[("fp32", 8, 16)]["tokens_per_s"]
    batching = loads[("fp32", 8, 16)]["tokens_per_s"] / loads[("fp32", 1, 16)]["tokens_per_s"]
    lines += [
        "",
        f"int8 vs fp32: weights {weights:.2f}x, tokens/s at 16 clients {speed:.2f}x.",
        "",
        f"serve_load: {batching:.2f}x (tokens/s with batching vs without, 16 clients)",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/align", help="checkpoint folder (default: models/align)")
    parser.add_argument("--requests", type=int, default=48, help="requests per setting")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--problems", type=int, default=20, help="HumanEval problems for pass@1 / gold bpb")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        scratch = Path(tmp)
        model = Path(args.model)
        if not (model / "config.json").exists():
            model = fallback_checkpoint(scratch / "random")
        folders = variant_checkpoints(model, scratch)
        variants = {name: quality(folder, args.problems) for name, folder in folders.items()}
        loads: dict[tuple[str, int, int], dict] = {}
        for name, folder in folders.items():
            for batch in (8, 1) if name == "fp32" else (8,):
                proc, url = start_server(folder, batch, scratch)
                try:
                    drive(url, 4, 8, args.max_tokens)  # warm up
                    for clients in CONCURRENCY:
                        loads[(name, batch, clients)] = drive(url, clients, args.requests, args.max_tokens)
                        print(name, batch, clients, json.dumps(loads[(name, batch, clients)]), flush=True)
                finally:
                    stop(proc)
    command = "python bench/serve_load.py " + " ".join(sys.argv[1:])
    info = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, model {model.name}, "
        f"{args.requests} requests per setting, max_tokens {args.max_tokens}, greedy"
    )
    section = markdown(variants, loads, command.strip(), info)
    publish(section, write=not args.no_write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
