"""The training loop: one DeepSpeed engine for every training stage (pretrain, anneal, later SFT).

Runs inside each rank process started by the ``deepspeed`` launcher (see ``components/train/worker.py``).
A stage describes *what* to train in a :class:`TrainPlan` (steps, LR schedule, data, starting weights);
this module does the rest the same way for every stage::

    for step in range(start, steps):
        for micro in range(grad_accum):
            batch = data.batch(step * grad_accum + micro, micro_batch, rank, world)   # indexed by step
            loss = cross-entropy of next-token prediction
            engine.backward(loss); engine.step()    # DeepSpeed: accumulation, clipping, ZeRO, LR schedule
        log / evaluate / checkpoint

Because the data position is a function of the step, resuming needs only the step, the weights, the
optimizer, the scheduler and the RNG states, all of which the checkpoint restores.
"""

from __future__ import annotations

import math
import os
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from components.train import checkpoint, metrics
from components.train.config import TrainConfig
from components.train.plan import TrainPlan

if TYPE_CHECKING:  # components.config imports the stage configs: no runtime import back
    from components.config import Params
    from components.tokenize.dataset import TokenDataset

#: Test/ops hook: stop (exit code STOPPED_EXIT_CODE) after this many optimizer steps, like a killed run.
STOP_AFTER_ENV = "CODEMILL_TRAIN_STOP_AFTER"
STOPPED_EXIT_CODE = 75


def deepspeed_config(train: TrainConfig) -> dict[str, Any]:
    """The DeepSpeed config dict built from ``train:`` params."""
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": train.micro_batch,
        "gradient_accumulation_steps": train.grad_accum,
        "gradient_clipping": train.grad_clip,
        "bf16": {"enabled": train.precision == "bf16"},
        "zero_optimization": {"stage": train.zero_stage},
        # The optimizer is torch's AdamW (no JIT-built fused kernel); ZeRO handles it fine.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    if train.zero_stage == 3:
        config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] = False
    return config


def setup_distributed() -> tuple[int, int, torch.device]:
    """Join the process group (NCCL on GPUs, gloo on CPU); returns rank, world size and this rank's device."""
    import deepspeed

    on_gpu = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if on_gpu:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        ranks_here = int(os.environ.get("LOCAL_SIZE", "1"))
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // ranks_here))
        device = torch.device("cpu")
    deepspeed.init_distributed(dist_backend="nccl" if on_gpu else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def next_token_loss(
    model: Any, batch: torch.Tensor | tuple[torch.Tensor, torch.Tensor], reduction: str = "mean"
) -> torch.Tensor:
    """Cross-entropy (nats) of predicting ``batch[:, 1:]`` from ``batch[:, :-1]`` (-100 targets ignored).

    ``batch`` may be ``(input_ids, labels)`` of the same shape (SFT: labels -100 on prompt and padding):
    then the targets are ``labels[:, 1:]``.
    """
    tokens, labels = batch if isinstance(batch, tuple) else (batch, batch)
    inputs, targets = tokens[:, :-1], labels[:, 1:]
    logits = model(input_ids=inputs).logits
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction=reduction)


def _all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def eval_indices(num_sequences: int, train: TrainConfig, rank: int, world: int) -> list[int]:
    """This rank's validation sequences: ``eval_batches`` micro-batches' worth per rank (at most the split),
    spread evenly over the whole split (it is in file order), the same ones at every evaluation."""
    per_rank = max(1, min(train.eval_batches * train.micro_batch, num_sequences // world))
    total = per_rank * world
    spread = [index * num_sequences // total for index in range(total)]
    return spread[rank::world]


@torch.no_grad()
def evaluate(
    engine: Any, val_data: TokenDataset, train: TrainConfig, bytes_per_token: float
) -> dict[str, float]:
    """Validation loss (nats/token) and bits per byte over the sequences of :func:`eval_indices`."""
    rank, world = dist.get_rank(), dist.get_world_size()
    mine = eval_indices(len(val_data), train, rank, world)
    engine.eval()
    nats, tokens = 0.0, 0.0
    for first in range(0, len(mine), train.micro_batch):  # same count on every rank (ZeRO-3 gathers)
        rows = [val_data.sequence(index) for index in mine[first : first + train.micro_batch]]
        batch = torch.from_numpy(np.stack(rows)).to(engine.device)
        nats += next_token_loss(engine, batch, reduction="sum").item()
        tokens += (batch[:, 1:] != -100).sum().item()
    engine.train()
    nats, tokens = _all_reduce_sum([nats, tokens], engine.device)
    return {"val_loss": nats / tokens, "val_bpb": nats / (math.log(2) * tokens * bytes_per_token)}


class LossMeter:
    """Mean training loss over all ranks' micro-batches since the last log (no device sync until then).

    ``totals()`` (the all-reduced sum and count so far) goes into checkpoints, so a resumed run logs the
    same interval means as an uninterrupted one.
    """

    def __init__(self, device: torch.device, carried_sum: float = 0.0, carried_count: int = 0) -> None:
        self.device = device
        self.pending: list[torch.Tensor] = []
        self.carried_sum, self.carried_count = carried_sum, carried_count

    def add(self, loss: torch.Tensor) -> None:
        """Record one micro-batch's loss on this rank."""
        self.pending.append(loss.detach().float())

    def totals(self) -> tuple[float, int]:
        """Sum (averaged over ranks) and count of the losses since the last log. Call on every rank."""
        if self.pending:
            local = torch.stack(self.pending).sum().item()
            self.carried_sum += _all_reduce_sum([local], self.device)[0] / dist.get_world_size()
            self.carried_count += len(self.pending)
            self.pending = []
        return self.carried_sum, self.carried_count

    def pop_mean(self) -> float:
        """The mean since the last log; starts a new interval. Call on every rank."""
        total, count = self.totals()
        self.carried_sum, self.carried_count = 0.0, 0
        return total / count if count else float("nan")


class MetricLogger:
    """Prints progress and logs metrics to the stage's MLflow run (``MLFLOW_RUN_ID``), on rank 0 only."""

    def __init__(self, stage: str, rank: int) -> None:
        self.stage = stage
        self.enabled = rank == 0
        self.run_id = os.environ.get("MLFLOW_RUN_ID") if self.enabled else None
        self.client = None
        if self.run_id:
            import mlflow

            self.client = mlflow.MlflowClient()

    def log(self, step: int, values: dict[str, float | None]) -> None:
        """Log ``values`` (None entries skipped) at optimizer step ``step``."""
        if not self.enabled:
            return
        values = {key: float(value) for key, value in values.items() if value is not None}
        shown = " ".join(f"{key} {value:.4g}" for key, value in values.items())
        print(f"codemill {self.stage}: step {step} {shown}", flush=True)
        if self.client is not None:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            batch = [Metric(key, value, now, step) for key, value in values.items()]
            self.client.log_batch(self.run_id, metrics=batch)

    def log_json(self, content: dict[str, Any], artifact_file: str) -> None:
        """Log a JSON artifact to the stage run."""
        if self.client is not None:
            self.client.log_dict(self.run_id, content, artifact_file)


def _stop_after() -> int | None:
    value = os.environ.get(STOP_AFTER_ENV)
    return int(value) if value else None


def _load_model(params: Params, plan: TrainPlan, index: dict[str, Any]) -> Any:
    """The model to train: random init from ``model:`` params, or the weights of ``plan.init_from``."""
    from transformers import AutoModelForCausalLM

    from components.train.model import build_model, hf_config

    if plan.init_from is None:
        return build_model(hf_config(params.model, index["vocab_size"], index["eos_id"]))
    model = AutoModelForCausalLM.from_pretrained(plan.init_from, dtype=torch.float32)
    if model.config.vocab_size != index["vocab_size"]:
        raise ValueError(
            f"{plan.init_from}: vocabulary of {model.config.vocab_size} tokens, but {plan.data_dir} "
            f"has {index['vocab_size']}"
        )
    return model


def run_fingerprint(params: Params, plan: TrainPlan, index: dict[str, Any], world: int) -> str:
    """What a checkpoint must share with this run to be resumed: params that shape training, data, world."""
    dumped = params.model_dump(by_alias=True, mode="json")
    not_shaping = {
        "checkpoint_every",
        "keep_checkpoints",
        "eval_every",
        "eval_batches",
        "log_every",
        "peak_tflops",
        "hostfile",
        "master_port",
        "num_gpus",
        "num_nodes",
    }
    train = {key: value for key, value in dumped["train"].items() if key not in not_shaping}
    payload = {
        "stage": plan.stage,
        "seed": params.project.seed,
        "model": dumped["model"],
        "train": train,
        "stage_params": dumped[plan.stage],
        "world_size": world,
        "data_index": index,
        **plan.identity,
    }
    return checkpoint.fingerprint(payload)


def train(params: Params, plan: TrainPlan) -> dict[str, Any]:
    """Train ``plan`` on this rank (resuming from the latest compatible checkpoint) and export the model.

    Returns the training summary (also written to ``<output>/training.json`` by rank 0).
    """
    import deepspeed
    from transformers import set_seed
    from transformers.integrations import HfDeepSpeedConfig

    from components.tokenize.dataset import TokenDataset, load_tokenizer, read_index
    from components.train.model import count_params, flops_params
    from components.train.optim import param_groups, scheduler

    rank, world, device = setup_distributed()
    cfg = params.train
    set_seed(params.project.seed)
    index = read_index(plan.data_dir)
    ds_config = deepspeed_config(cfg)
    zero3_context = HfDeepSpeedConfig(ds_config) if cfg.zero_stage == 3 else None  # noqa: F841  (keep alive)
    model = _load_model(params, plan, index)
    n_params = count_params(model)
    flops_token = metrics.flops_per_token(
        flops_params(model), params.model.layers, params.model.hidden, params.model.seq_len
    )
    optimizer = torch.optim.AdamW(
        param_groups(model, plan.weight_decay), lr=1.0, betas=tuple(cfg.betas), eps=cfg.eps
    )
    # A callable: DeepSpeed builds the scheduler on the optimizer once ZeRO has regrouped its parameters.
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=lambda wrapped: scheduler(wrapped, plan.schedule),
        config=ds_config,
    )

    logger = MetricLogger(plan.stage, rank)
    logger.log_json(ds_config, f"{plan.stage}/deepspeed_config.json")
    logger.log_json(model.config.to_dict(), f"{plan.stage}/model_config.json")

    fingerprint = run_fingerprint(params, plan, index, world)
    state: dict[str, Any] = {"fingerprint": fingerprint, "history": {"train": [], "val": []}}
    tag = checkpoint.resumable_tag(plan.checkpoint_dir, fingerprint, rank)
    if tag is not None:
        state = checkpoint.load(engine, plan.checkpoint_dir, tag)
        if rank == 0:
            print(f"codemill {plan.stage}: resumed from {plan.checkpoint_dir}/{tag}", flush=True)
    start, history = state.get("step", 0), state["history"]

    val_data = TokenDataset(plan.data_dir, "val", params.model.seq_len, params.project.seed)
    val_stats = index["splits"]["val"]
    bytes_per_token = val_stats["bytes"] / val_stats["tokens"]
    tokens_per_step = cfg.micro_batch * cfg.grad_accum * world * params.model.seq_len
    throughput = metrics.Throughput(
        tokens_per_step, device, state.get("train_seconds", 0.0), state.get("timed_tokens", 0)
    )
    peak = metrics.peak_flops(metrics.device_name(device), cfg.peak_tflops) if device.type == "cuda" else None
    stop_after = _stop_after()

    def run_eval(step: int) -> None:
        result = evaluate(engine, val_data, cfg, bytes_per_token)
        history["val"].append({"step": step, **result})
        logger.log(step, result)

    train_loss = LossMeter(device, *state.get("pending_loss", (0.0, 0)))
    for step in range(start, plan.steps):
        lr = engine.get_lr()[0]
        for micro in range(cfg.grad_accum):
            batch = plan.train_data.batch(step * cfg.grad_accum + micro, cfg.micro_batch, rank, world)
            batch = tuple(part.to(device) for part in batch) if isinstance(batch, tuple) else batch.to(device)
            loss = next_token_loss(engine, batch)
            engine.backward(loss)
            engine.step()  # at the accumulation boundary: clip, optimizer step, LR schedule step
            train_loss.add(loss)
        throughput.step()
        done = step + 1
        last = done == plan.steps

        if done % cfg.log_every == 0 or last:
            loss_value = train_loss.pop_mean()
            tokens_per_s = throughput.lap()
            grad_norm = engine.get_global_grad_norm()
            grad_norm = None if grad_norm is None else float(grad_norm)
            entry = {"loss": loss_value, "lr": lr, "grad_norm": grad_norm, "tokens_per_s": tokens_per_s}
            history["train"].append({"step": done, **entry})
            mfu = metrics.mfu(tokens_per_s, flops_token, world, peak)
            logger.log(done, {**entry, "mfu": mfu, "peak_mem_bytes": metrics.peak_memory_bytes(device)})

        with throughput.paused():
            if done % cfg.eval_every == 0 or last:
                run_eval(done)
            if done % cfg.checkpoint_every == 0 or last:
                state.update(
                    train_seconds=throughput.seconds,
                    timed_tokens=throughput.tokens,
                    pending_loss=train_loss.totals(),
                )
                checkpoint.save(engine, plan.checkpoint_dir, done, state, cfg.keep_checkpoints)
        if stop_after is not None and stop_after <= done < plan.steps:
            raise SystemExit(STOPPED_EXIT_CODE)

    if not history["val"] or history["val"][-1]["step"] != plan.steps:
        run_eval(plan.steps)

    summary = {
        "stage": plan.stage,
        "steps": plan.steps,
        "tokens_trained": plan.steps * tokens_per_step,
        "tokens_per_step": tokens_per_step,
        "final_lr": plan.schedule(plan.steps),
        "val_loss": history["val"][-1]["val_loss"],
        "val_bpb": history["val"][-1]["val_bpb"],
        "tokens_per_s": throughput.mean,
        "mfu": metrics.mfu(throughput.mean, flops_token, world, peak),
        "flops_per_token": flops_token,
        "params": n_params,
        "world_size": world,
        "precision": cfg.precision,
        "zero_stage": cfg.zero_stage,
        "device": metrics.device_name(device),
        "peak_mem_bytes": metrics.peak_memory_bytes(device),
        "resumed_from_step": start or None,
        "train_seconds": throughput.seconds,
        "curve": history["train"],
        "val_curve": history["val"],
        **plan.details,
    }
    weights = checkpoint.full_state_dict(engine)  # a collective: every rank takes part
    if rank == 0:
        tokenizer = load_tokenizer(plan.data_dir)
        checkpoint.export_model(model, weights, tokenizer, plan.output, {"training.json": summary})
    dist.barrier()
    return summary
