"""The training step against a bare PyTorch loop and against this CPU's measured matmul roofline.

Side by side in one process, on the CPU profile's model and batch (``params.yaml``: ``model``, ``train``):
1. the engine's step (``components/train/engine.Trainer.train_step``: DeepSpeed with the profile's ZeRO
   stage, the project's loss, its data order);
2. the engine with ``train.compile`` (``engine.compile()``);
3. a bare loop: the same Hugging Face model (same init), torch AdamW, the same batches, the same loss;
4. the bare loop under ``torch.compile``.

Tokens come from a tokenize output built here from standard-library files (``--tokens DIR`` uses an
existing one, e.g. ``data/tokenize``). The roofline is the best of several 2048x2048 fp32 matmuls on
this machine's threads; MFU = tokens/s x training FLOPs per token (``components/train/metrics.py``) / it.

    python bench/train_throughput.py [--steps 20] [--warmup 3] [--tokens data/tokenize] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from benchdoc import publish  # noqa: E402
from corpora import stdlib_clean_shard  # noqa: E402

SECTION = "## Training step vs a bare loop and the roofline"
MATMUL_N = 2048


def matmul_peak(repeats: int = 10) -> float:
    """Best fp32 FLOP/s of an ``MATMUL_N``² matmul on this process's threads."""
    a, b = torch.randn(MATMUL_N, MATMUL_N), torch.randn(MATMUL_N, MATMUL_N)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - started)
    return 2 * MATMUL_N**3 / best


def build_tokens(folder: Path, params: object) -> str:
    """A tokenize output from standard-library files (what the default corpus is made of)."""
    from components import tokenize
    from components.stage_runner import call_stage

    clean = stdlib_clean_shard(folder / "clean", files=120)
    call_stage(tokenize.STAGE, params, [str(clean)], str(folder / "tokenize"))
    return str(folder / "tokenize")


def engine_rate(job: object, context: object, tokens: str, output: str, steps: int, warmup: int) -> float:
    """Tokens/s of the engine's ``train_step`` (DeepSpeed, one rank, gloo)."""
    from components import pretrain
    from components.stage_runner import StageIO
    from components.train.engine import Trainer

    plan = pretrain.train_plan(job, context, StageIO({"tokens": tokens}, output))
    trainer = Trainer(job, context, plan)
    for step in range(warmup):
        trainer.train_step(step)
    started = time.perf_counter()
    for step in range(warmup, warmup + steps):
        trainer.train_step(step)
    elapsed = time.perf_counter() - started
    return trainer.tokens_per_step * steps / elapsed


def bare_rate(job: object, context: object, tokens: str, steps: int, warmup: int, compiled: bool) -> float:
    """Tokens/s of a plain loop: the same model, AdamW and batches, mean next-token cross-entropy."""
    from transformers import set_seed

    from components.tokens.dataset import TokenizedData
    from components.train.model import build_model, hf_config

    set_seed(context.seed)
    data = TokenizedData(tokens, job.model.seq_len, context.seed)
    source = data.train(job.fim.rate, job.fim.spm_rate)
    model = build_model(hf_config(job.model, data.vocab_size, data.eos_id)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=job.pretrain.lr, betas=tuple(job.train.betas))
    forward = torch.compile(model) if compiled else model
    micro, accum = job.train.micro_batch, job.train.grad_accum

    def step(index: int) -> None:
        for part in range(accum):
            ids = source.batch(index * accum + part, micro, 0, 1)
            logits = forward(input_ids=ids[:, :-1]).logits
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
            (loss / accum).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), job.train.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for index in range(warmup):
        step(index)
    started = time.perf_counter()
    for index in range(warmup, warmup + steps):
        step(index)
    elapsed = time.perf_counter() - started
    return micro * accum * job.model.seq_len * steps / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps per variant")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compile, allocator)")
    parser.add_argument("--tokens", default=None, help="an existing tokenize output (default: build one)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md")
    args = parser.parse_args()

    from components.params import load_params
    from components.tokens.dataset import TokenizedData
    from components.train.launch import free_port
    from components.train.metrics import flops_per_token
    from components.train.model import build_model, flops_params, hf_config

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_RANK", "0")
    params = load_params(str(PROJECT_ROOT / "params.yaml"))
    job, context = params.stage_config("pretrain"), params.context()
    with tempfile.TemporaryDirectory(prefix="train-throughput-") as scratch:
        tokens = args.tokens or build_tokens(Path(scratch), params)
        engine = engine_rate(job, context, tokens, f"{scratch}/out", args.steps, args.warmup)
        compiled_job = job.model_copy(update={"train": job.train.model_copy(update={"compile": True})})
        engine_compiled = engine_rate(
            compiled_job, context, tokens, f"{scratch}/out-c", args.steps, args.warmup
        )
        bare = bare_rate(job, context, tokens, args.steps, args.warmup, compiled=False)
        compiled = bare_rate(job, context, tokens, args.steps, args.warmup, compiled=True)
        data = TokenizedData(tokens, job.model.seq_len, context.seed)
        model = build_model(hf_config(job.model, data.vocab_size, data.eos_id))
    flops_token = flops_per_token(flops_params(model), job.model.layers, job.model.hidden, job.model.seq_len)
    peak = matmul_peak()
    rows = [
        (f"engine (DeepSpeed ZeRO-{job.train.zero_stage})", engine),
        ("engine, train.compile", engine_compiled),
        ("bare loop", bare),
        ("bare loop, torch.compile", compiled),
    ]
    threads = torch.get_num_threads()
    command = "python bench/train_throughput.py " + " ".join(sys.argv[1:])
    lines = [
        SECTION,
        "",
        f"`{command.strip()}` ({platform.machine()}, {threads} threads, CPU profile model "
        f"{job.model.hidden}x{job.model.layers}, batch {job.train.micro_batch}x{job.model.seq_len} tokens, "
        f"{args.steps} timed steps after {args.warmup})",
        "",
        f"Measured fp32 matmul roofline ({MATMUL_N}² matmul, best of 10): {peak / 1e9:.1f} GFLOP/s; "
        f"training FLOPs per token {flops_token / 1e6:.2f} M.",
        "",
        "| variant | tokens/s | vs bare loop | MFU vs measured roofline |",
        "| --- | --- | --- | --- |",
    ]
    for name, rate in rows:
        lines.append(f"| {name} | {rate:.0f} | {rate / bare:.2f}x | {rate * flops_token / peak:.1%} |")
    lines += ["", f"train_throughput: {engine / bare:.2f}x", ""]
    section = "\n".join(lines)
    publish(section, write=not args.no_write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
