"""Parameters shared by the training stages: ``model:`` (the architecture) and ``train:`` (the engine).

The per-stage sections (``pretrain:``, ``anneal:``) hold what differs between stages: steps, learning
rate schedule, data mix. See docs/training.md.
"""

from typing import Literal

from pydantic import Field, field_validator, model_validator

from components.params.base import StrictModel


class ModelConfig(StrictModel):
    """A decoder-only transformer built from scratch (no weights are downloaded)."""

    #: Registered in MLflow as ``codemill-<name>`` (the registry refuses ``/``, ``:`` and path tricks).
    name: str = Field("tiny", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=200)
    #: ``llama``: SwiGLU + RoPE + grouped-query attention; ``gpt2``: learned positions, GELU MLP.
    arch: Literal["llama", "gpt2"] = "llama"
    hidden: int = Field(192, ge=8)
    layers: int = Field(4, ge=1)
    heads: int = Field(4, ge=1)
    #: Key/value heads: 1 is multi-query attention (StarCoder), ``heads`` (or null) is plain multi-head.
    #: Only llama supports fewer than ``heads``.
    kv_heads: int | None = Field(1, ge=1)
    #: MLP width (SwiGLU width for llama).
    intermediate: int = Field(512, ge=1)
    #: Training context length; also the model's maximum positions.
    seq_len: int = Field(256, ge=8)
    rope_theta: float = Field(10000.0, gt=0)
    tie_embeddings: bool = False
    #: Attention kernel: ``sdpa`` (PyTorch's fused scaled-dot-product attention; flash/memory-efficient
    #: kernels on GPU), ``eager`` (the reference), ``flash_attention_2`` (needs the flash-attn package).
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"

    @model_validator(mode="after")
    def _heads_fit(self) -> "ModelConfig":
        if self.hidden % self.heads:
            raise ValueError(f"model.hidden ({self.hidden}) must be divisible by model.heads ({self.heads})")
        kv_heads = self.num_kv_heads
        if self.heads % kv_heads:
            raise ValueError(f"model.heads ({self.heads}) must be divisible by model.kv_heads ({kv_heads})")
        if self.arch == "gpt2" and kv_heads != self.heads:
            raise ValueError("model.kv_heads: gpt2 has no grouped-query attention; set it to null")
        return self

    @property
    def num_kv_heads(self) -> int:
        """Key/value heads (``heads`` when ``kv_heads`` is null)."""
        return self.kv_heads or self.heads


class TrainConfig(StrictModel):
    """The DeepSpeed engine: precision, ZeRO, batch shape, launch topology, checkpoints and logging."""

    #: fp32 on CPU; bf16 needs a GPU (weights are exported in fp32 either way).
    precision: Literal["fp32", "bf16"] = "fp32"
    zero_stage: int = Field(1, ge=0, le=3)
    #: Sequences per rank per micro step; global batch = micro_batch * grad_accum * ranks.
    micro_batch: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    #: Max global gradient norm (0 disables clipping).
    grad_clip: float = Field(1.0, ge=0)
    betas: list[float] = Field(default_factory=lambda: [0.9, 0.95])
    eps: float = Field(1e-8, gt=0)
    #: Ranks per node (``deepspeed --num_gpus``); on CPU, processes.
    num_gpus: int = Field(1, ge=1)
    num_nodes: int = Field(1, ge=1)
    #: MPI-style hostfile for multi-node runs (``worker-0 slots=8``); null: this machine only.
    hostfile: str | None = None
    #: Rendezvous port; null picks a free one on this machine.
    master_port: int | None = Field(None, ge=1, le=65535)
    #: Save a resumable checkpoint every N optimizer steps (into ``<output>.ckpt/``).
    checkpoint_every: int = Field(100, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    #: Validation loss and bits-per-byte every N steps and at the end, over ``eval_batches`` micro-batches
    #: per rank (always the same ones).
    eval_every: int = Field(100, ge=1)
    eval_batches: int = Field(4, ge=1)
    log_every: int = Field(10, ge=1)
    #: Peak dense bf16 TFLOP/s of one device for MFU; null: looked up from the device name
    #: (components/train/metrics.py).
    peak_tflops: float | None = Field(None, gt=0)
    #: ``torch.compile`` the model inside the DeepSpeed engine (``engine.compile()``).
    compile: bool = False
    #: Recompute each layer's activations in the backward pass (less memory, ~1/3 more compute): what
    #: long contexts need.
    activation_checkpointing: bool = False

    @field_validator("betas")
    @classmethod
    def _two_betas(cls, betas: list[float]) -> list[float]:
        if len(betas) != 2 or not all(0 <= beta < 1 for beta in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas}")
        return betas


#: ``train`` fields that do not change what is trained (left out of the checkpoint fingerprint).
NOT_SHAPING_TRAIN_FIELDS = frozenset(
    {
        "checkpoint_every", "keep_checkpoints", "eval_every", "eval_batches", "log_every", "peak_tflops",
        "hostfile", "master_port", "num_gpus", "num_nodes", "compile", "activation_checkpointing",
    }
)  # fmt: skip


class FimRates(StrictModel):
    """``tokenize.fim_rate`` / ``tokenize.fim_spm_rate``, applied by the training dataset per epoch."""

    rate: float = Field(0.5, ge=0, le=1)
    spm_rate: float = Field(0.5, ge=0, le=1)


class TrainingJob(StrictModel):
    """What a training stage reads: the architecture, the engine, and (in subclasses) its own section.

    ``stage`` names the section; :meth:`section` returns it.
    """

    stage: str
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()

    def section(self) -> StrictModel:
        """The stage's own section (``pretrain:``, ``anneal:``, ``sft:``)."""
        return getattr(self, self.stage)

    def shaping(self) -> dict:
        """Everything of the job that changes the trained weights (for the checkpoint fingerprint)."""
        dumped = self.model_dump(mode="json")
        dumped["train"] = {k: v for k, v in dumped["train"].items() if k not in NOT_SHAPING_TRAIN_FIELDS}
        return dumped
