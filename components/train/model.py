"""Build the transformers model from ``model:`` params (random init with Hugging Face's initializer)."""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, PretrainedConfig, PreTrainedModel

from components.errors import StageError
from components.params.training import ModelConfig


def hf_config(model: ModelConfig, vocab_size: int, eos_id: int) -> PretrainedConfig:
    """The transformers config of ``model`` for ``vocab_size`` tokens; documents end with ``eos_id``."""
    if model.arch == "gpt2":
        return GPT2Config(
            vocab_size=vocab_size,
            n_positions=model.seq_len,
            n_embd=model.hidden,
            n_layer=model.layers,
            n_head=model.heads,
            n_inner=model.intermediate,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            tie_word_embeddings=model.tie_embeddings,
            bos_token_id=eos_id,
            eos_token_id=eos_id,
            pad_token_id=eos_id,
        )
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=model.hidden,
        intermediate_size=model.intermediate,
        num_hidden_layers=model.layers,
        num_attention_heads=model.heads,
        num_key_value_heads=model.num_kv_heads,
        max_position_embeddings=model.seq_len,
        rope_parameters={"rope_type": "default", "rope_theta": model.rope_theta},
        tie_word_embeddings=model.tie_embeddings,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )


def check_attention(attn_implementation: str) -> str:
    """``attn_implementation`` if this machine can run it; a clear error naming the param otherwise."""
    from transformers.utils import is_flash_attn_2_available

    if attn_implementation == "flash_attention_2" and not is_flash_attn_2_available():
        raise StageError(
            "model.attn_implementation: flash_attention_2 needs a CUDA GPU and the flash-attn package "
            "(pip install flash-attn); use sdpa"
        )
    return attn_implementation


def build_model(config: PretrainedConfig, attn_implementation: str = "sdpa") -> PreTrainedModel:
    """A randomly initialised causal LM (fp32). Under ZeRO-3, create an ``HfDeepSpeedConfig`` first."""
    return AutoModelForCausalLM.from_config(
        config, dtype=torch.float32, attn_implementation=check_attention(attn_implementation)
    )


def numel(param: torch.Tensor) -> int:
    """Elements of a parameter, also when ZeRO-3 has partitioned it away (``ds_numel``)."""
    return int(getattr(param, "ds_numel", None) or param.numel())


def count_params(model: PreTrainedModel) -> int:
    """All parameters of ``model`` (tied weights once)."""
    return sum(numel(param) for param in model.parameters())


def embedding_params(model: PreTrainedModel) -> int:
    """Parameters of the input lookup tables (token and learned position embeddings)."""
    tables: list[Any] = [model.get_input_embeddings()]
    position = getattr(getattr(model, "transformer", None), "wpe", None)
    if position is not None:
        tables.append(position)
    return sum(numel(table.weight) for table in tables)


def flops_params(model: PreTrainedModel) -> int:
    """N of the 6N FLOPs/token rule: all parameters except input lookup tables (nanoGPT, PaLM).

    A tied LM head is a matmul with the token embedding, so it counts once.
    """
    head: Any = model.get_output_embeddings()
    tied = head is not None and head.weight is model.get_input_embeddings().weight
    return count_params(model) - embedding_params(model) + (numel(head.weight) if tied else 0)
