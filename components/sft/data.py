"""SFT data: JSON-lines readers, chat formatting with prompt masks, the collator and the batch source.

- A record is ``{"instruction": str, "response": str}`` or ``{"messages": [{"role", "content"}, ...]}``
  (roles ``system``, ``user``, ``assistant``; at least one assistant turn). Anything else is a
  :class:`StageError` naming ``file:line``.
- :func:`encode_conversation` renders a conversation with the tokenizer's chat template (ChatML) piece by
  piece, so each token knows whether it belongs to an assistant reply: labels are the token ids on reply
  tokens (content and ``<|im_end|>``) and -100 on everything else (system/user turns, role headers),
  unless ``loss_on_prompt``.
- :class:`SftBatches` collates (``components/train/batches.py``: right-padded with ``<fim_pad>``, labels
  -100 on padding) the examples of each micro step, in a seeded order per epoch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from components.errors import StageError
from components.shards import iter_jsonl
from components.train.batches import IGNORE_INDEX, EpochOrder, Example, collate

if TYPE_CHECKING:  # a type only: transformers takes seconds to import
    from transformers import PreTrainedTokenizerBase

ROLES = ("system", "user", "assistant")
ASSISTANT = "assistant"

Message = dict[str, str]


def to_messages(record: dict[str, Any], where: str) -> list[Message]:
    """The conversation of one JSON-lines record (either format); StageError naming ``where`` if malformed."""
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise StageError(f"{where}: 'messages' must be a non-empty list")
        for number, message in enumerate(messages):
            if (
                not isinstance(message, dict)
                or message.get("role") not in ROLES
                or not isinstance(message.get("content"), str)
            ):
                raise StageError(
                    f"{where}: messages[{number}] must be {{'role': one of {list(ROLES)}, 'content': str}}"
                )
        if not any(message["role"] == ASSISTANT for message in messages):
            raise StageError(f"{where}: no assistant message to train on")
        return [{"role": message["role"], "content": message["content"]} for message in messages]
    instruction, response = record.get("instruction"), record.get("response")
    if not isinstance(instruction, str) or not isinstance(response, str):
        raise StageError(f"{where}: expected string fields 'instruction' and 'response', or 'messages'")
    return pair_messages(instruction, response)


def pair_messages(instruction: str, response: str) -> list[Message]:
    """An instruction/response pair as a two-turn conversation."""
    return [{"role": "user", "content": instruction}, {"role": ASSISTANT, "content": response}]


def read_conversations(path: str) -> list[list[Message]]:
    """Every conversation of a JSON-lines file, in file order."""
    return [to_messages(record, where) for where, record in iter_jsonl(path)]


def _segments(messages: Sequence[Message], tokenizer: PreTrainedTokenizerBase, chat_template: bool):
    """``(text, trained)`` pieces whose concatenation is the rendered conversation."""
    if not chat_template:
        for message in messages:
            if message["role"] == ASSISTANT:
                yield message["content"] + tokenizer.eos_token, True
            else:
                yield message["content"] + "\n", False
        return

    def render(turns: Sequence[Message], add_generation_prompt: bool) -> str:
        if not turns and not add_generation_prompt:
            return ""
        text = tokenizer.apply_chat_template(
            list(turns), tokenize=False, add_generation_prompt=add_generation_prompt
        )
        return str(text)

    done = ""
    for number, message in enumerate(messages):
        pieces = []
        if message["role"] == ASSISTANT:
            pieces.append((render(messages[:number], True), False))  # the assistant header: prompt
        pieces.append((render(messages[: number + 1], False), message["role"] == ASSISTANT))
        for rendered, trained in pieces:
            if not rendered.startswith(done):
                raise ValueError("the chat template does not render conversations incrementally")
            yield rendered[len(done) :], trained
            done = rendered


def encode_conversation(
    messages: Sequence[Message],
    tokenizer: PreTrainedTokenizerBase,
    chat_template: bool = True,
    loss_on_prompt: bool = False,
) -> Example:
    """Tokens and labels of a conversation: loss on assistant replies only (or everywhere)."""
    tokens: list[int] = []
    labels: list[int] = []
    for text, trained in _segments(messages, tokenizer, chat_template):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        tokens += ids
        labels += ids if trained or loss_on_prompt else [IGNORE_INDEX] * len(ids)
    return Example(np.asarray(tokens, dtype=np.int64), np.asarray(labels, dtype=np.int64))


class SftBatches(EpochOrder[Example]):
    """Micro-batches of examples, indexed by micro step (see the module docstring)."""

    def __init__(self, examples: Sequence[Example], seed: int, pad_id: int, max_len: int) -> None:
        super().__init__(examples, seed)
        self.pad_id, self.max_len = pad_id, max_len

    def batch(
        self, step: int, micro_batch: int, rank: int = 0, world_size: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The collated examples of micro step ``step`` on ``rank`` (positions in a seeded epoch order)."""
        return collate(self.chosen(step, micro_batch, rank, world_size), self.pad_id, self.max_len)
