"""The training engine: one DeepSpeed loop for every training stage (pretrain, anneal, sft, align).

Runs inside each rank process started by the ``deepspeed`` launcher (``components/train/worker.py``). A
stage describes *what* to train in a :class:`~components.train.plan.TrainPlan` (steps, LR schedule, data,
starting weights, loss); :class:`Trainer` does the rest the same way for every stage, in the seams
torchtitan has::

    trainer = Trainer(job, context, plan)   # setup: ranks, model, optimizer, DeepSpeed, resume
    for step in range(start, steps):
        trainer.train_step(step)            # one accumulation window with the plan's loss
        log / trainer.validate() / trainer.checkpoint(step)
    trainer.export(trainer.summary())

``train_step`` takes the window's micro-batches (indexed by step, so a resumed run gets the same data),
counts their targets over all ranks, and backpropagates each micro-batch's *summed* loss divided by
that count: the window's loss is the mean over its targets, whatever their split between micro-batches.
DeepSpeed does the accumulation boundary (clipping, optimizer and LR-schedule step, ZeRO).

Because the data position is a function of the step, resuming needs only the step, the weights, the
optimizer, the scheduler and the RNG states, all of which the checkpoint restores.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from components.params import StageContext, TrainingJob
from components.params.training import TrainConfig
from components.tracking import RunLogger
from components.train import checkpoint, metrics
from components.train.losses import Batch, RankedBatch, TrainLoss
from components.train.plan import TrainPlan
from components.train.validate import bits_per_byte, sequence_nats, spread_indices

#: Test/ops hook: stop (exit code STOPPED_EXIT_CODE) after this many optimizer steps, like a killed run.
STOP_AFTER_ENV = "CODEMILL_TRAIN_STOP_AFTER"
STOPPED_EXIT_CODE = 75
#: Summary fields that vary between identical runs (time, machine, resume): kept out of ``training.json``
#: (a DVC output), reported to MLflow and the stage report only.
RUN_FACTS = ("tokens_per_s", "mfu", "device", "peak_mem_bytes", "resumed_from_step", "train_seconds")


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
        torch.set_num_threads(cpu_threads_per_rank())
        device = torch.device("cpu")
    deepspeed.init_distributed(dist_backend="nccl" if on_gpu else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def cpu_threads_per_rank() -> int:
    """The cores this process may use shared among the ranks on this machine, at most
    ``$OMP_NUM_THREADS`` when it is set (OpenMP threads beyond the free cores spin and slow every rank)."""
    threads = max(1, len(os.sched_getaffinity(0)) // int(os.environ.get("LOCAL_SIZE", "1")))
    limit = os.environ.get("OMP_NUM_THREADS", "")
    return min(threads, int(limit)) if limit.isdigit() and int(limit) > 0 else threads


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum of ``values`` over all ranks (float64)."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def eval_indices(num_sequences: int, train: TrainConfig, rank: int, world: int) -> list[int]:
    """This rank's validation sequences: ``eval_batches`` micro-batches' worth per rank (at most the split),
    spread evenly over the whole split (it is in file order), the same ones at every evaluation."""
    per_rank = max(1, min(train.eval_batches * train.micro_batch, num_sequences // world))
    return spread_indices(num_sequences, per_rank * world)[rank::world]


def to_device(batch: Batch, device: torch.device) -> Batch:
    """A batch (tensor, ``(input_ids, labels)`` or ranked responses) on ``device``."""
    if isinstance(batch, RankedBatch):
        return batch.to(device)
    if isinstance(batch, tuple):
        return (batch[0].to(device), batch[1].to(device))
    return batch.to(device)


def accumulate_window(
    engine: Any, window: list[Batch], loss: TrainLoss, device: torch.device, world: int
) -> tuple[torch.Tensor, float]:
    """Backpropagate one accumulation window and step: each micro-batch's summed loss divided by the
    window's target count over all ranks, so the window's loss is the mean over its targets.

    Returns this rank's summed loss over the window and the window's target count (all ranks).
    """
    targets = all_reduce_sum([float(sum(loss.targets(batch) for batch in window))], device)[0]
    # DeepSpeed averages gradients over ranks: each rank divides by the window's targets per rank.
    per_rank = max(targets, 1.0) / world
    window_sum = torch.zeros((), device=device)
    for batch in window:
        loss_sum = loss(engine, batch)
        engine.backward(loss_sum / per_rank, scale_wrt_gas=False)
        engine.step()  # at the accumulation boundary: clip, optimizer step, LR schedule step
        window_sum += loss_sum.detach()
    return window_sum, targets


class LossMeter:
    """Summed loss (and the loss's named parts) and targets of all ranks since the last log: its mean is
    the interval's loss per target.

    ``totals()`` goes into checkpoints, so a resumed run logs the same interval means as an uninterrupted
    one (the parts of an interval cut by a resume are logged from the resume on). Steps' sums are kept on
    the device until a log (no sync per step).
    """

    def __init__(self, device: torch.device, carried_sum: float = 0.0, carried_targets: float = 0.0) -> None:
        self.device = device
        self.pending: list[torch.Tensor] = []
        self.pending_parts: dict[str, list[torch.Tensor]] = {}
        self.pending_targets = 0.0
        self.carried_sum, self.carried_targets = carried_sum, carried_targets
        self.carried_parts: dict[str, float] = {}

    def add(
        self, loss_sum: torch.Tensor, global_targets: float, parts: Mapping[str, torch.Tensor] | None = None
    ) -> None:
        """Record one step: this rank's summed loss (and named parts) and the window's target count over
        all ranks."""
        self.pending.append(loss_sum.detach().float())
        for name, value in (parts or {}).items():
            self.pending_parts.setdefault(name, []).append(value.detach().float())
        self.pending_targets += global_targets

    def totals(self) -> tuple[float, float]:
        """Summed loss (all ranks) and targets since the last log. Call on every rank."""
        if self.pending:
            names = sorted(self.pending_parts)
            local = [torch.stack(self.pending).sum().item()]
            local += [torch.stack(self.pending_parts[name]).sum().item() for name in names]
            summed = all_reduce_sum(local, self.device)
            self.carried_sum += summed[0]
            for name, value in zip(names, summed[1:], strict=True):
                self.carried_parts[name] = self.carried_parts.get(name, 0.0) + value
            self.carried_targets += self.pending_targets
            self.pending, self.pending_parts, self.pending_targets = [], {}, 0.0
        return self.carried_sum, self.carried_targets

    def pop_means(self) -> dict[str, float]:
        """The loss per target since the last log (``loss``) and each part's; starts a new interval.
        Call on every rank."""
        total, targets = self.totals()
        sums = {"loss": total, **self.carried_parts}
        self.carried_sum, self.carried_targets, self.carried_parts = 0.0, 0.0, {}
        return {name: value / targets if targets else float("nan") for name, value in sums.items()}


def _stop_after() -> int | None:
    value = os.environ.get(STOP_AFTER_ENV)
    return int(value) if value else None


def run_fingerprint(job: TrainingJob, context: StageContext, plan: TrainPlan, world: int) -> str:
    """What a checkpoint must share with this run to be resumed: params that shape training, data, world."""
    payload = {
        "job": job.shaping(),
        "seed": context.seed,
        "world_size": world,
        "data_index": plan.data.index,
        **plan.identity,
    }
    return checkpoint.fingerprint(payload)


class Trainer:
    """One rank's view of a training run: setup, ``train_step``, ``validate``, ``checkpoint``, ``summary``."""

    def __init__(self, job: TrainingJob, context: StageContext, plan: TrainPlan) -> None:
        """Set up: join the ranks, build the model and optimizer under DeepSpeed, resume if possible."""
        import deepspeed
        from transformers import set_seed
        from transformers.integrations import HfDeepSpeedConfig

        from components.train.model import count_params, flops_params
        from components.train.optim import param_groups, scheduler

        self.job, self.plan, self.cfg = job, plan, job.train
        self.rank, self.world, self.device = setup_distributed()
        set_seed(context.seed)
        self.ds_config = deepspeed_config(self.cfg)
        # Under ZeRO-3, HF builds the model partitioned while this object lives.
        self._zero3 = HfDeepSpeedConfig(self.ds_config) if self.cfg.zero_stage == 3 else None
        self.model = self._load_model()
        if self.cfg.activation_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.n_params = count_params(self.model)
        self.flops_token = metrics.flops_per_token(
            flops_params(self.model), job.model.layers, job.model.hidden, job.model.seq_len
        )
        beta1, beta2 = self.cfg.betas
        optimizer = torch.optim.AdamW(
            param_groups(self.model, plan.weight_decay),
            lr=1.0,
            betas=(beta1, beta2),
            eps=self.cfg.eps,
            fused=self.device.type == "cuda",  # one kernel for the whole update on GPUs
        )
        # A callable: DeepSpeed builds the scheduler on the optimizer once ZeRO has regrouped its parameters.
        self.engine, _, _, _ = deepspeed.initialize(
            model=self.model,
            optimizer=optimizer,
            lr_scheduler=lambda wrapped: scheduler(wrapped, plan.schedule),
            config=self.ds_config,
        )
        if self.cfg.compile:
            self.engine.compile()
        self.logger = RunLogger(enabled=self.rank == 0)
        self.logger.log_dict(self.ds_config, f"{plan.stage}/deepspeed_config.json")
        self.logger.log_dict(self.model.config.to_dict(), f"{plan.stage}/model_config.json")

        fingerprint = run_fingerprint(job, context, plan, self.world)
        self.state: dict[str, Any] = {"fingerprint": fingerprint, "history": {"train": [], "val": []}}
        tag = checkpoint.resumable_tag(plan.checkpoint_dir, fingerprint, self.rank)
        if tag is not None:
            self.state = checkpoint.load(self.engine, plan.checkpoint_dir, tag)
            self._print(f"resumed from {plan.checkpoint_dir}/{tag}")
        self.start = self.state.get("step", 0)
        self.history = self.state["history"]
        self.tokens_per_step = self.cfg.micro_batch * self.cfg.grad_accum * self.world * job.model.seq_len
        self.throughput = metrics.Throughput(
            self.tokens_per_step,
            self.device,
            self.state.get("train_seconds", 0.0),
            self.state.get("timed_tokens", 0),
        )
        on_gpu = self.device.type == "cuda"
        self.peak = (
            metrics.peak_flops(metrics.device_name(self.device), self.cfg.peak_tflops) if on_gpu else None
        )
        self.loss_meter = LossMeter(self.device, *self.state.get("pending_loss", (0.0, 0.0)))

    def _print(self, message: str) -> None:
        if self.rank == 0:
            print(f"codemill {self.plan.stage}: {message}", flush=True)

    def _load_model(self) -> Any:
        """The model to train: random init from ``model:`` params, or the weights of ``plan.init_from``."""
        from transformers import AutoModelForCausalLM

        from components.train.model import build_model, check_attention, hf_config

        data, attention = self.plan.data, check_attention(self.job.model.attn_implementation)
        if self.plan.init_from is None:
            return build_model(hf_config(self.job.model, data.vocab_size, data.eos_id), attention)
        model = AutoModelForCausalLM.from_pretrained(
            self.plan.init_from, dtype=torch.float32, attn_implementation=attention
        )
        if model.config.vocab_size != data.vocab_size:
            raise ValueError(
                f"{self.plan.init_from}: vocabulary of {model.config.vocab_size} tokens, but "
                f"{data.directory} has {data.vocab_size}"
            )
        return model

    def window(self, step: int) -> list[Batch]:
        """The micro-batches of optimizer step ``step`` on this rank, on its device."""
        micro_batch, accum = self.cfg.micro_batch, self.cfg.grad_accum
        return [
            to_device(
                self.plan.train_data.batch(step * accum + micro, micro_batch, self.rank, self.world),
                self.device,
            )
            for micro in range(accum)
        ]

    def train_step(self, step: int) -> None:
        """One optimizer step: the window's summed loss over its targets (all ranks), then the update."""
        window = self.window(step)
        step_sum, targets = accumulate_window(self.engine, window, self.plan.loss, self.device, self.world)
        self.loss_meter.add(step_sum, targets, self.plan.loss.pop_parts())
        self.throughput.step()

    def validate(self, step: int) -> dict[str, float]:
        """Validation loss (nats/token) and bits per byte over the sequences of :func:`eval_indices`."""
        val = self.plan.data.val
        mine = eval_indices(len(val), self.cfg, self.rank, self.world)
        # Every rank runs the same number of batches (ZeRO-3 gathers weights in each forward).
        local_nats, local_tokens = sequence_nats(
            self.engine, val, mine, self.cfg.micro_batch, self.engine.device
        )
        nats, tokens = all_reduce_sum([local_nats, float(local_tokens)], self.device)
        result = {
            "val_loss": nats / tokens,
            "val_bpb": bits_per_byte(nats, tokens, self.plan.data.val_bytes_per_token),
        }
        self.history["val"].append({"step": step, **result})
        self.log(step, result)
        return result

    def log(self, step: int, values: Mapping[str, float | None]) -> None:
        """Print and log ``values`` (None entries skipped) at optimizer step ``step``, on rank 0."""
        if self.rank != 0:
            return
        shown = {key: float(value) for key, value in values.items() if value is not None}
        self._print(f"step {step} " + " ".join(f"{key} {value:.4g}" for key, value in shown.items()))
        self.logger.log_metrics(step, shown)

    def log_training(self, done: int, lr: float) -> None:
        """Log the interval's loss per target (and its parts), LR, gradient norm, tokens/s and MFU."""
        losses = self.loss_meter.pop_means()
        tokens_per_s = self.throughput.lap()
        grad_norm = self.engine.get_global_grad_norm()
        entry = {**losses, "lr": lr, "grad_norm": None if grad_norm is None else float(grad_norm)}
        self.history["train"].append({"step": done, **entry})
        mfu = metrics.mfu(tokens_per_s, self.flops_token, self.world, self.peak)
        peak_mem = metrics.peak_memory_bytes(self.device)
        self.log(done, {**entry, "tokens_per_s": tokens_per_s, "mfu": mfu, "peak_mem_bytes": peak_mem})

    def checkpoint(self, done: int) -> None:
        """Save a resumable checkpoint after ``done`` steps (every rank)."""
        self.state.update(
            train_seconds=self.throughput.seconds,
            timed_tokens=self.throughput.tokens,
            pending_loss=self.loss_meter.totals(),
        )
        checkpoint.save(self.engine, self.plan.checkpoint_dir, done, self.state, self.cfg.keep_checkpoints)

    def summary(self) -> dict[str, Any]:
        """The run's figures: what ``training.json`` keeps, plus :data:`RUN_FACTS`."""
        plan, final = self.plan, self.history["val"][-1]
        mean_tokens_per_s = self.throughput.mean
        return {
            "stage": plan.stage,
            "steps": plan.steps,
            "tokens_trained": plan.steps * self.tokens_per_step,
            "tokens_per_step": self.tokens_per_step,
            "final_lr": plan.schedule(plan.steps),
            "val_loss": final["val_loss"],
            "val_bpb": final["val_bpb"],
            "flops_per_token": self.flops_token,
            "params": self.n_params,
            "world_size": self.world,
            "precision": self.cfg.precision,
            "zero_stage": self.cfg.zero_stage,
            "curve": self.history["train"],
            "val_curve": self.history["val"],
            **plan.details,
            "tokens_per_s": mean_tokens_per_s,
            "mfu": metrics.mfu(mean_tokens_per_s, self.flops_token, self.world, self.peak),
            "device": metrics.device_name(self.device),
            "peak_mem_bytes": metrics.peak_memory_bytes(self.device),
            "resumed_from_step": self.start or None,
            "train_seconds": self.throughput.seconds,
            "report": {"drops": plan.report_drops, "metrics": plan.report_metrics},
        }

    def export(self, summary: dict[str, Any]) -> None:
        """Write the Hugging Face checkpoint with ``training.json`` (deterministic facts only) and leave the
        full summary for the stage process. Call on every rank (gathering the weights is a collective)."""
        weights = checkpoint.full_state_dict(self.engine)
        if self.rank == 0:
            kept = {key: value for key, value in summary.items() if key not in (*RUN_FACTS, "report")}
            checkpoint.export_model(
                self.model, weights, self.plan.data.tokenizer, self.plan.output, {"training.json": kept}
            )
            Path(self.plan.run_summary).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        dist.barrier()

    def train(self) -> dict[str, Any]:
        """Run the remaining steps (validating, logging and checkpointing on schedule), then export."""
        plan, cfg, stop_after = self.plan, self.cfg, _stop_after()
        for step in range(self.start, plan.steps):
            lr = self.engine.get_lr()[0]
            self.train_step(step)
            done = step + 1
            last = done == plan.steps
            if done % cfg.log_every == 0 or last:
                self.log_training(done, lr)
            with self.throughput.paused():
                if done % cfg.eval_every == 0 or last:
                    self.validate(done)
                if done % cfg.checkpoint_every == 0 or last:
                    self.checkpoint(done)
            if stop_after is not None and stop_after <= done < plan.steps:
                raise SystemExit(STOPPED_EXIT_CODE)
        if not self.history["val"] or self.history["val"][-1]["step"] != plan.steps:
            self.validate(plan.steps)
        summary = self.summary()
        self.export(summary)
        return summary


def train(job: TrainingJob, context: StageContext, plan: TrainPlan) -> dict[str, Any]:
    """Train ``plan`` on this rank (resuming from the latest compatible checkpoint) and export the model."""
    return Trainer(job, context, plan).train()
