"""The figures of bench/gpu_check.sh: the GPU's measured bf16 matmul peak, then the run's summary.

    python bench/gpu_figures.py roofline --out OUT     # OUT/roofline.json
    python bench/gpu_figures.py summary --out OUT      # OUT/gpu_smoke.json and OUT/gpu_smoke.md

The summary reads the pretrain stage's report (tokens/s, MFU against the datasheet peak, peak memory),
the measured roofline, and the evaluate stage's scores (HumanEval pass@1, gold and held-out bpb). Its last
line is the headline (``gpu_smoke_mfu_vs_measured_peak: <ratio>x``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

#: Square bf16 matmul size, and seconds measured, for the roofline.
MATMUL_N = 8192
ROOFLINE_S = 2.0


def roofline(out: Path) -> dict[str, Any]:
    """The device's sustained bf16 matmul FLOP/s (the best of 1-second windows)."""
    import torch

    a = torch.randn(MATMUL_N, MATMUL_N, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(MATMUL_N, MATMUL_N, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    best, deadline = 0.0, time.perf_counter() + ROOFLINE_S
    while time.perf_counter() < deadline:
        start, count = time.perf_counter(), 0
        while time.perf_counter() - start < 0.5:
            a @ b
            count += 1
        torch.cuda.synchronize()
        best = max(best, 2 * MATMUL_N**3 * count / (time.perf_counter() - start))
    figures = {"device": torch.cuda.get_device_name(), "bf16_matmul_tflops": best / 1e12}
    (out / "roofline.json").write_text(json.dumps(figures, indent=2))
    print(f"roofline: {figures['device']}, bf16 {MATMUL_N}^2 matmul {best / 1e12:.0f} TFLOP/s")
    return figures


def summary(out: Path, eval_dir: Path) -> dict[str, Any]:
    """The run's figures from the stage reports, as JSON and as a docs/benchmarks.md section."""
    pretrain = json.loads((out / "pretrain.json").read_text())
    peak = json.loads((out / "roofline.json").read_text())
    scores = json.loads((eval_dir / "eval.json").read_text())["models"]["pretrain"]
    metrics, details = pretrain["metrics"], pretrain["details"]
    tokens_per_s = float(metrics["mean_tokens_per_s"])
    flops_token = float(details.get("flops_per_token") or 0.0)
    measured_mfu = tokens_per_s * flops_token / (peak["bf16_matmul_tflops"] * 1e12) if flops_token else None
    figures = {
        "device": peak["device"],
        "params": metrics["params"],
        "tokens_trained": metrics["tokens_trained"],
        "pretrain_seconds": pretrain["seconds"],
        "tokens_per_s": tokens_per_s,
        "mfu_vs_datasheet": metrics.get("mean_mfu"),
        "mfu_vs_measured_peak": measured_mfu,
        "measured_bf16_tflops": peak["bf16_matmul_tflops"],
        "peak_memory_gib": (details.get("peak_mem_bytes") or 0) / 2**30,
        "humaneval_pass_at_1": scores.get("humaneval.pass_at_1"),
        "humaneval_gold_bpb": scores.get("humaneval.gold_bpb"),
        "heldout_bpb": scores.get("val.bpb"),
    }
    (out / "gpu_smoke.json").write_text(json.dumps(figures, indent=2))
    lines = [
        "## GPU smoke run",
        "",
        "Command: `bash bench/gpu_prepare.sh` here, then `bash bench/gpu_check.sh` on the GPU machine.",
        "",
        "| figure | value |",
        "| --- | ---: |",
        *(f"| {name} | {_shown(value)} |" for name, value in figures.items()),
        "",
        f"gpu_smoke_mfu_vs_measured_peak: {measured_mfu or 0:.2f}x",
    ]
    (out / "gpu_smoke.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return figures


def _shown(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def main(argv: list[str] | None = None) -> None:
    """Run one of the two steps."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=["roofline", "summary"])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--eval", type=Path, default=None, help="folder holding the evaluate stage's eval.json"
    )
    args = parser.parse_args(argv)
    if args.step == "roofline":
        roofline(args.out)
    else:
        summary(args.out, args.eval or args.out)


if __name__ == "__main__":
    main()
