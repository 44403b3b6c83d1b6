"""Throughput and model FLOPs utilisation (MFU).

FLOPs per token (nanoGPT, PaLM appendix B): ``6 N + 12 L d T`` for forward + backward, with N the
parameters outside input lookup tables (:func:`components.train.model.flops_params`), L layers, d the
model width (heads x head size) and T the context length. MFU = achieved FLOP/s / (devices x peak FLOP/s).
Peaks are dense bf16 tensor-core figures from the vendors' datasheets, matched against
``torch.cuda.get_device_name()``; ``train.peak_tflops`` overrides. On CPU only tokens/s is reported.
"""

from __future__ import annotations

import contextlib
import resource
import time
from collections.abc import Iterator

import torch

#: Dense bf16 peak TFLOP/s per device. Matched as substrings of the device name, longest key first
#: (so ``H100 PCIe`` wins over ``H100`` and ``L40S`` over ``L4``).
PEAK_BF16_TFLOPS: dict[str, float] = {
    "B200": 2250.0,
    "H200": 989.0,  # also GH200
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,  # SXM
    "H800": 989.0,
    "A100": 312.0,
    "A800": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
}


def flops_per_token(n_params: int, layers: int, hidden: int, seq_len: int) -> float:
    """Training FLOPs per token: ``6 N`` for the weights' matmuls plus ``12 L d T`` for attention."""
    return 6.0 * n_params + 12.0 * layers * hidden * seq_len


def peak_flops(device_name: str, override_tflops: float | None = None) -> float | None:
    """Peak FLOP/s of one device: the override, else the table entry for ``device_name``, else None."""
    if override_tflops is not None:
        return override_tflops * 1e12
    for key in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):
        if key.lower() in device_name.lower():
            return PEAK_BF16_TFLOPS[key] * 1e12
    return None


def mfu(tokens_per_s: float, flops_token: float, devices: int, peak: float | None) -> float | None:
    """Model FLOPs utilisation in [0, 1] of ``devices`` devices together (None when the peak is unknown)."""
    if not peak:
        return None
    return tokens_per_s * flops_token / (devices * peak)


def device_name(device: torch.device) -> str:
    """``NVIDIA H100 80GB HBM3`` on CUDA, ``cpu`` otherwise."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def peak_memory_bytes(device: torch.device) -> int:
    """Peak memory of this rank: allocated accelerator memory on CUDA, peak resident set size on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


class Throughput:
    """Tokens/s of the training steps alone: time spent evaluating and checkpointing is left out.

    ``seconds`` and ``tokens`` accumulate over the run (and across a resume, when restored).
    """

    def __init__(self, tokens_per_step: int, device: torch.device, seconds: float = 0.0, tokens: int = 0):
        self.tokens_per_step = tokens_per_step
        self.device = device
        self.seconds = seconds
        self.tokens = tokens
        self._start = time.perf_counter()
        self._steps = 0

    def step(self) -> None:
        """Count one optimizer step."""
        self._steps += 1

    def lap(self) -> float:
        """Tokens/s since the previous lap (waits for the accelerator to finish first)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        elapsed, tokens = now - self._start, self._steps * self.tokens_per_step
        self.seconds += elapsed
        self.tokens += tokens
        self._start, self._steps = now, 0
        return tokens / elapsed if elapsed > 0 else 0.0

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Leave the time spent inside this block out of the measurement."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self._start += time.perf_counter() - started

    @property
    def mean(self) -> float:
        """Tokens/s over all laps."""
        return self.tokens / self.seconds if self.seconds > 0 else 0.0
