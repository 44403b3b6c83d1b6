"""Resumable training checkpoints (DeepSpeed) and the final plain Hugging Face export.

Layout of a stage's checkpoint directory (``<output>.ckpt/``, next to the DVC output and outside it, so
it survives a killed run and DVC never deletes it)::

    step00000200/            one DeepSpeed checkpoint (model, ZeRO optimizer shards, scheduler,
                             client state: step, RNG states of every rank, loss history, fingerprint)
    step00000200/codemill.json   the fingerprint and step, readable without loading the checkpoint
    latest                   the tag of the newest *complete* checkpoint

A save writes the tag directory first and replaces ``latest`` (temp file + rename) only after every
rank has finished writing, so a run killed mid-save resumes from the previous checkpoint. The last
``train.keep_checkpoints`` are kept. A checkpoint whose fingerprint (the params and inputs that shape
the run) differs from the current one is not resumed: the directory is cleared and training starts over.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

LATEST = "latest"
STATE_FILE = "codemill.json"
#: Our part of DeepSpeed's client state (DeepSpeed adds keys of its own when loading).
CLIENT_KEY = "codemill"
#: Bumped when the client state changes shape: older checkpoints are then not resumed.
FORMAT_VERSION = 1
TAG_PATTERN = re.compile(r"^step(\d+)$")


def fingerprint(payload: dict[str, Any]) -> str:
    """A stable hash of the JSON-serialisable ``payload`` and of this module's checkpoint format."""
    text = json.dumps({"format": FORMAT_VERSION, **payload}, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def step_tag(step: int) -> str:
    """Checkpoint tag after ``step`` optimizer steps: ``step00000200``."""
    return f"step{step:08d}"


def _tags(root: Path) -> list[str]:
    """Tag directories under ``root``, oldest first."""
    if not root.is_dir():
        return []
    tags = [path.name for path in root.iterdir() if path.is_dir() and TAG_PATTERN.match(path.name)]
    return sorted(tags, key=tag_step)


def tag_step(tag: str) -> int:
    """The step of checkpoint tag ``step00000200``."""
    match = TAG_PATTERN.match(tag)
    if match is None:
        raise ValueError(f"not a checkpoint tag: {tag!r}")
    return int(match.group(1))


def latest_tag(root: str | Path) -> str | None:
    """The newest complete checkpoint's tag, or None."""
    pointer = Path(root) / LATEST
    if not pointer.is_file():
        return None
    tag = pointer.read_text().strip()
    return tag if (Path(root) / tag / STATE_FILE).is_file() else None


def resumable_tag(root: str | Path, expected_fingerprint: str, rank: int) -> str | None:
    """The tag to resume from, or None to start fresh. Call on every rank (it synchronises them).

    Rank 0 removes what cannot be resumed: the whole directory when the fingerprint differs, and tag
    directories newer than ``latest`` (a save that was cut off).
    """
    root = Path(root)
    tag = latest_tag(root)
    if tag is not None:
        saved = json.loads((root / tag / STATE_FILE).read_text())
        if saved["fingerprint"] != expected_fingerprint:
            if rank == 0:
                print(f"codemill: {root}: checkpoint from other params or inputs; starting fresh", flush=True)
            tag = None
    dist.barrier()  # every rank has decided before rank 0 deletes anything
    if rank == 0:
        if tag is None:
            if root.exists():
                shutil.rmtree(root)
        else:
            for stale in _tags(root):
                if tag_step(stale) > tag_step(tag):
                    shutil.rmtree(root / stale)
    dist.barrier()
    return tag


def rng_state() -> dict[str, Any]:
    """This process's random number generator states (python, numpy, torch, CUDA)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore states saved by :func:`rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save(engine, root: str | Path, step: int, client_state: dict[str, Any], keep: int) -> None:
    """Save a resumable checkpoint after ``step`` optimizer steps. Call on every rank."""
    root = Path(root)
    tag = step_tag(step)
    world_rng = [None] * dist.get_world_size()
    dist.all_gather_object(world_rng, rng_state())
    state = {CLIENT_KEY: {**client_state, "step": step, "rng": world_rng}}
    engine.save_checkpoint(str(root), tag=tag, client_state=state, save_latest=False)  # ends with a barrier
    if dist.get_rank() == 0:
        info = {"step": step, "fingerprint": client_state["fingerprint"]}
        (root / tag / STATE_FILE).write_text(json.dumps(info, indent=2) + "\n")
        pending = root / f".{LATEST}.tmp"
        pending.write_text(tag)
        os.replace(pending, root / LATEST)
        for old in _tags(root)[:-keep]:
            shutil.rmtree(root / old)
    dist.barrier()


def load(engine, root: str | Path, tag: str) -> dict[str, Any]:
    """Load checkpoint ``tag`` into ``engine`` (weights, optimizer, scheduler) and restore this rank's RNG.

    Returns the client state (``step``, ``history``, ...).
    """
    _, client_state = engine.load_checkpoint(
        str(root), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True
    )
    if client_state is None or CLIENT_KEY not in client_state:
        raise RuntimeError(f"{root}/{tag}: DeepSpeed could not load the checkpoint")
    state = client_state[CLIENT_KEY]
    set_rng_state(state["rng"][dist.get_rank()])
    return state


def full_state_dict(engine) -> dict[str, torch.Tensor]:
    """The full fp32 weights (the optimizer's master copy under ZeRO), gathered. Call on every rank."""
    from deepspeed.utils import safe_get_full_fp32_param

    state = {}
    for name, param in engine.module.named_parameters():
        full = safe_get_full_fp32_param(param)
        if full is None:  # no ZeRO partitioning: the module holds the weights
            full = param.detach()
        state[name] = full.float().cpu().clone()
    return state


def export_model(
    model: Any,
    state_dict: dict[str, torch.Tensor],
    tokenizer: Any,
    output: str | Path,
    extra_files: dict[str, Any],
) -> None:
    """Write a plain Hugging Face checkpoint (fp32 safetensors, config, tokenizer) atomically.

    ``extra_files`` (name -> JSON-serialisable) are written beside it, e.g. ``training.json``.
    """
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.config.dtype = torch.float32
    model.save_pretrained(tmp, state_dict=state_dict)
    tokenizer.save_pretrained(tmp)
    for name, content in extra_files.items():
        (tmp / name).write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")
    if output.exists():
        shutil.rmtree(output)
    os.replace(tmp, output)
