"""Smooth metrics, the ones that move where pass@k is 0 (OLMo 2, DataDecide, CodeXGLUE):

- **gold bits per byte**: the model's negative log-likelihood of a benchmark's gold answer given its
  prompt (infilling: given the FIM prompt), in bits per byte of the answer;
- **held-out bits per byte** per language: documents of the held-out repositories
  (``data/curate.holdout``), each scored from its start (after the end-of-text token documents follow in
  training) in windows of the model's context, each window after the first keeping the previous
  window's last token as context;
- **next-line exact match** (CodeXGLUE line completion): the model completes the next line of a held-out
  document from the text before it; a match is the same line up to whitespace.

Context and continuation are tokenized apart, so a continuation's tokens are the same whatever its
prompt (as lm-evaluation-harness does).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from components.evaluate.generate import Decoding, generate

#: A line is a completion target when it has at least this many non-blank characters.
MIN_LINE_CHARS = 4


def _encode(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    return list(tokenizer(list(texts), add_special_tokens=False)["input_ids"])


@torch.no_grad()
def scored_nats(model: Any, sequences: Sequence[tuple[list[int], int]], batch_size: int) -> list[float]:
    """Per ``(token ids, n)``: the summed negative log-likelihood (nats) of the last ``n`` tokens, each
    given the tokens before it (right padding, batched)."""
    device = next(model.parameters()).device
    model.eval()
    totals: list[float] = []
    for first in range(0, len(sequences), batch_size):
        chunk = sequences[first : first + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.zeros((len(chunk), width), dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        scored = torch.zeros((len(chunk), width), dtype=torch.bool)
        for row, (tokens, n) in enumerate(chunk):
            ids[row, : len(tokens)] = torch.tensor(tokens)
            mask[row, : len(tokens)] = 1
            scored[row, len(tokens) - n : len(tokens)] = True
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        log_probs = torch.log_softmax(logits[:, :-1], dim=-1)
        target = ids[:, 1:].to(device)
        nll = -log_probs.gather(-1, target.unsqueeze(-1)).squeeze(-1)
        totals += (nll * scored[:, 1:].to(device)).sum(dim=1).tolist()
    return totals


def continuation_nats(
    model: Any, tokenizer: Any, pairs: Sequence[tuple[str, str]], batch_size: int
) -> list[tuple[float, int]]:
    """Per ``(context, continuation)``: nats of the continuation given the context, and the bytes of the
    continuation scored. A context too long for the model keeps its end; a continuation longer than the
    context window is scored on its first tokens (and bytes)."""
    context_len = int(model.config.max_position_embeddings)
    contexts, continuations = (
        _encode(tokenizer, [c for c, _ in pairs]),
        _encode(tokenizer, [x for _, x in pairs]),
    )
    sequences, nbytes = [], []
    for (_, text), context, continuation in zip(pairs, contexts, continuations, strict=True):
        if len(continuation) > context_len - 1:
            continuation = continuation[: context_len - 1]
            text = tokenizer.decode(continuation)
        context = ([tokenizer.eos_token_id, *context])[-(context_len - len(continuation)) :]
        sequences.append((context + continuation, len(continuation)))
        nbytes.append(len(text.encode("utf-8")))
    return list(zip(scored_nats(model, sequences, batch_size), nbytes, strict=True))


def document_nats(
    model: Any, tokenizer: Any, documents: Sequence[str], batch_size: int, max_tokens: int
) -> list[tuple[float, int]]:
    """Per document (in order, until ``max_tokens`` are scored in all): its nats and bytes, scored from
    its start in windows of the model's context. Documents past the budget are left out."""
    context_len = int(model.config.max_position_embeddings)
    windows: list[tuple[list[int], int]] = []
    owners: list[int] = []
    budget, nbytes = max_tokens, []
    for index, ids in enumerate(_encode(tokenizer, documents)):
        if budget <= 0 or not ids:
            break
        tokens = [tokenizer.eos_token_id, *ids]
        start = 0
        while start + 1 < len(tokens):
            window = tokens[start : start + context_len]
            windows.append((window, len(window) - 1))
            owners.append(index)
            start += context_len - 1
        budget -= len(ids)
        nbytes.append(len(documents[index].encode("utf-8")))
    totals = [0.0] * len(nbytes)
    for owner, nats in zip(owners, scored_nats(model, windows, batch_size), strict=True):
        totals[owner] += nats
    return list(zip(totals, nbytes, strict=True))


@dataclass(frozen=True)
class LineTask:
    """One next-line completion: the text before the line, and the line."""

    task_id: str
    context: str
    target: str


def line_tasks(documents: Sequence[tuple[str, str]], count: int, seed: int) -> list[LineTask]:
    """``count`` next-line tasks drawn (seeded) from ``(document id, content)`` pairs: lines after the
    first with at least MIN_LINE_CHARS non-blank characters; the same draw for every model and arm."""
    candidates = []
    for doc_id, content in documents:
        lines = content.splitlines(keepends=True)
        offset = len(lines[0]) if lines else 0
        for number, line in enumerate(lines[1:], start=1):
            if len(line.strip()) >= MIN_LINE_CHARS:
                candidates.append((doc_id, number, offset, line))
            offset += len(line)
    chosen = random.Random(seed).sample(candidates, min(count, len(candidates)))
    texts = dict(documents)
    return [
        LineTask(f"{doc_id}:{number}", texts[doc_id][:offset], line.rstrip("\n"))
        for doc_id, number, offset, line in sorted(chosen)
    ]


def same_line(prediction: str, target: str) -> bool:
    """Exact match up to whitespace (CodeXGLUE compares whitespace-separated tokens)."""
    return prediction.split() == target.split()


def first_line(text: str) -> str:
    """The first non-blank line of ``text`` (a model may first close the previous line)."""
    return next((line for line in text.splitlines() if line.strip()), "")


def complete_lines(
    model: Any, tokenizer: Any, tasks: Sequence[LineTask], max_new_tokens: int, batch_size: int, seed: int
) -> list[str]:
    """The model's greedy next line for each task: the first non-blank line of its output."""
    prompts = [tokenizer.eos_token + task.context for task in tasks]
    outputs = generate(model, tokenizer, prompts, Decoding(max_new_tokens), batch_size, seed)
    return [first_line(text) for text in outputs]
