"""Batched generation: left padding, KV cache, prompts sorted by length, stop sequences, seeded sampling.

Greedy outputs are the same as one prompt at a time (``bench/eval_throughput.py`` and a test check it):
left padding with the attention mask keeps every row's positions, and rows are cut at their own stop
sequence or end token. Prompts are built here too: a completion prompt, an infilling (FIM) prompt in the
model's PSM format, or a chat prompt for instruct models.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from components.tokens.tokenizer import FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX

#: Instruction given to chat (instruct) models around a benchmark prompt.
CHAT_INSTRUCTION = "Complete the following {language} code. Reply with the whole code in a code block.\n"
CODE_BLOCK = re.compile(r"```[\w+#-]*\n(.*?)(?:```|$)", re.DOTALL)
#: Batch size of ``batch_size: auto`` without a GPU.
CPU_AUTO_BATCH = 64
#: Share of free GPU memory the KV cache of one batch may take (``batch_size: auto``).
GPU_MEMORY_SHARE = 0.5


@dataclass(frozen=True)
class Decoding:
    """One decoding setting: greedy (``temperature == 0``) or sampling with temperature and top_p."""

    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()

    @property
    def greedy(self) -> bool:
        """No sampling: the most likely token at every step."""
        return self.temperature == 0.0


def truncate_at_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` up to (not including) the first occurrence of any stop sequence."""
    cut = min((index for index in (text.find(s) for s in stop) if index >= 0), default=len(text))
    return text[:cut]


def extract_code(reply: str) -> str:
    """The code of a chat reply: its first fenced code block, or the whole reply without one."""
    match = CODE_BLOCK.search(reply)
    return match.group(1) if match else reply


class StopOnSequences(StoppingCriteria):
    """Stops each row once its generated text (after the prompt) contains a stop sequence."""

    def __init__(self, tokenizer: Any, prompt_len: int, stop: Sequence[str]) -> None:
        self.tokenizer = tokenizer
        self.prompt_len = prompt_len
        self.stop = tuple(stop)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_len :], skip_special_tokens=True)
        done = [any(s in text for s in self.stop) for text in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def chat_request(prompt: str, language: str = "python") -> str:
    """The user turn that asks an instruct model to complete a benchmark prompt."""
    return f"{CHAT_INSTRUCTION.format(language=language)}```{language}\n{prompt}```"


def chat_reply(code: str, language: str = "python") -> str:
    """The reply that request expects: the whole code in a code block (what SFT trains on)."""
    return f"```{language}\n{code.rstrip()}\n```"


def user_turn(tokenizer: Any, message: str) -> str:
    """``message`` as one user turn of the model's chat template, ready for the reply."""
    messages = [{"role": "user", "content": message}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def chat_prompt(tokenizer: Any, prompt: str, language: str = "python") -> str:
    """A benchmark prompt wrapped in the model's chat template as one user turn, ready for the reply."""
    return user_turn(tokenizer, chat_request(prompt, language))


def fim_prompt(prefix: str, suffix: str) -> str:
    """The infilling prompt of a StarCoder-style model (PSM): the model writes the middle after it."""
    return f"{FIM_PREFIX}{prefix}{FIM_SUFFIX}{suffix}{FIM_MIDDLE}"


def auto_batch_size(model: Any, sequence_tokens: int) -> int:
    """Rows per batch for ``batch_size: auto``: on a GPU, as many as the KV cache of ``sequence_tokens``
    per row fits in half the free memory; on CPU, CPU_AUTO_BATCH."""
    if not torch.cuda.is_available():
        return CPU_AUTO_BATCH
    config = model.config
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    element = torch.finfo(next(model.parameters()).dtype).bits // 8
    per_row = 2 * config.num_hidden_layers * heads * head_dim * sequence_tokens * element
    per_row += config.vocab_size * 4 * 2  # the logits of a step (and their softmax) in fp32
    free, _ = torch.cuda.mem_get_info()
    return max(1, min(1024, int(free * GPU_MEMORY_SHARE // per_row)))


def prompt_budget(model: Any, max_new_tokens: int) -> int:
    """Prompt tokens that fit beside ``max_new_tokens`` in the model's context (at least a quarter of it)."""
    context = int(model.config.max_position_embeddings)
    return max(context - max_new_tokens, context // 4)


@torch.no_grad()
def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    decoding: Decoding,
    batch_size: int,
    seed: int,
    end_tokens: Sequence[str] = (),
) -> list[str]:
    """One completion per prompt (in order), cut at the first stop sequence.

    Prompts go in batches of ``batch_size``, longest first (rows of a batch have similar lengths, so
    little padding), left-padded so every row continues from its last token; the KV cache is on.
    Sampling is seeded per batch (``seed + batch index``), so results depend only on the prompts and the
    seed. ``end_tokens`` (e.g. ``<|im_end|>`` for chat models) also end a row. A prompt longer than the
    model's context minus ``max_new_tokens`` keeps only its last tokens (the model sees the end of the
    prompt, where the signature and docstring are; scoring still uses the whole prompt).
    """
    tokenizer.padding_side = "left"
    tokenizer.truncation_side = "left"
    max_prompt_tokens = prompt_budget(model, decoding.max_new_tokens)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos_ids = [tokenizer.eos_token_id, *tokenizer.convert_tokens_to_ids(list(end_tokens))]
    device = next(model.parameters()).device
    model.eval()
    lengths = [len(ids) for ids in tokenizer(list(prompts), add_special_tokens=False)["input_ids"]]
    order = sorted(range(len(prompts)), key=lambda index: (-lengths[index], index))
    completions: dict[int, str] = {}
    for batch_index, first in enumerate(range(0, len(order), batch_size)):
        rows = order[first : first + batch_size]
        batch = tokenizer(
            [prompts[row] for row in rows],
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=max_prompt_tokens,
        )
        batch = {name: tensor.to(device) for name, tensor in batch.items() if name != "token_type_ids"}
        prompt_len = batch["input_ids"].shape[1]
        sampling: dict[str, bool | float] = {"do_sample": False}
        if not decoding.greedy:
            sampling = {"do_sample": True, "temperature": decoding.temperature, "top_p": decoding.top_p}
        stopping = StoppingCriteriaList([StopOnSequences(tokenizer, prompt_len, decoding.stop)])
        torch.manual_seed(seed + batch_index)
        output = model.generate(
            **batch,
            max_new_tokens=decoding.max_new_tokens,
            pad_token_id=pad_id,
            eos_token_id=eos_ids,
            use_cache=True,
            stopping_criteria=stopping if decoding.stop else None,
            top_k=None,
            **sampling,
        )
        texts = tokenizer.batch_decode(output[:, prompt_len:], skip_special_tokens=True)
        for row, text in zip(rows, texts, strict=True):
            completions[row] = truncate_at_stop(text, decoding.stop)
    return [completions[index] for index in range(len(prompts))]
