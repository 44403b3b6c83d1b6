"""The generation engine: admission control, a batching loop on one thread, streaming per row.

Requests become *rows* (one per prompt and ``n``). Admission reserves room for a request's rows out of
``serve.max_in_flight`` or refuses it at once (the server answers 429): work beyond the bound is never
queued, so the server degrades by refusing, not by collapsing. One thread takes queued rows in arrival
order, up to ``serve.max_batch_size`` that share one decoding setting, after waiting
``serve.batch_wait_ms`` for company, and runs them through ``model.generate`` (left padding, KV cache).

Per-row logic lives in a stopping criterion that ``generate`` calls after every step with the new
tokens: it decodes the row's text, sends the new part to the row's listener (holding back what could
still turn into a stop sequence), and ends the row at its own ``max_tokens``, end token, stop sequence,
deadline (``serve.limits.request_timeout_s``: no CPU burns after a client has been answered 504) or
cancellation (a streaming client that went away). Each batch runs on the model the slot holds when it
starts, so a swap never splits a batch between versions.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from components.params.serve import ServeConfig
from components.serve.models import LoadedModel, ModelSlot

log = logging.getLogger("codemill.serve")

#: Why a row ended: OpenAI's ``stop`` / ``length``, plus ``timeout`` (deadline) and ``cancelled``.
STOP, LENGTH, TIMEOUT, CANCELLED = "stop", "length", "timeout", "cancelled"


class Busy(Exception):
    """The server has ``max_in_flight`` rows already: answer 429."""


@dataclass(frozen=True)
class Decoding:
    """How a row samples: greedy when ``temperature`` is 0. Rows of one batch share it."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None

    def generate_kwargs(self) -> dict[str, Any]:
        """The sampling arguments of ``model.generate``."""
        if self.temperature == 0.0:
            return {"do_sample": False}
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p, "top_k": None}


@dataclass(eq=False)
class Row:
    """One completion in flight. ``listener(event)`` gets ``("text", delta)`` as text is decoded and one
    final ``("done", finish_reason)``; it is called on the engine thread and must not block."""

    prompt: str
    max_tokens: int
    decoding: Decoding
    deadline: float
    listener: Callable[[tuple[str, Any]], None]
    stop: tuple[str, ...] = ()
    end_tokens: tuple[str, ...] = ()
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    emitted: int = 0
    prompt_tokens: int = 0
    finish_reason: str | None = None
    version: str | None = None
    cancelled: bool = False

    @property
    def finished(self) -> bool:
        """The row has ended (its ``done`` event was sent)."""
        return self.finish_reason is not None

    def cancel(self) -> None:
        """Stop generating for this row at the next step (its client went away)."""
        self.cancelled = True

    def finish(self, reason: str) -> None:
        """End the row: send what text is left, then ``done``."""
        if self.finished:
            return
        self.finish_reason = reason
        self._emit(len(self.text))
        self.listener(("done", reason))

    def _emit(self, upto: int) -> None:
        if upto > self.emitted:
            self.listener(("text", self.text[self.emitted : upto]))
            self.emitted = upto

    def add_token(self, token: int, tokenizer: Any, end_ids: frozenset[int], now: float) -> None:
        """Take the next generated token: update the text, stream the safe part, end the row if due."""
        if token in end_ids:
            self.finish(STOP)
            return
        self.token_ids.append(token)
        self.text = tokenizer.decode(self.token_ids, skip_special_tokens=True)
        cut = min((i for i in (self.text.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.text = self.text[:cut]
            self.finish(STOP)
        elif len(self.token_ids) >= self.max_tokens:
            self.finish(LENGTH)
        elif self.cancelled:
            self.finish(CANCELLED)
        elif now >= self.deadline:
            self.finish(TIMEOUT)
        else:
            self._emit(self.safe_length())

    def safe_length(self) -> int:
        """How much of the text can be sent: not a tail that may still become a stop sequence, nor a
        trailing replacement character (a multi-byte character cut between tokens)."""
        safe = len(self.text.rstrip("\ufffd"))
        for stop in self.stop:
            for size in range(min(len(stop) - 1, safe), 0, -1):
                if self.text[:safe].endswith(stop[:size]):
                    safe -= size
                    break
        return max(safe, self.emitted)


class RowsCriteria(StoppingCriteria):
    """Hands each step's new tokens to the batch's rows; a row is done once it has finished."""

    def __init__(self, rows: Sequence[Row], tokenizer: Any, end_ids: frozenset[int]) -> None:
        self.rows, self.tokenizer, self.end_ids = rows, tokenizer, end_ids

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        now = time.monotonic()
        for row, token in zip(self.rows, input_ids[:, -1].tolist(), strict=True):
            if not row.finished:
                row.add_token(int(token), self.tokenizer, self.end_ids, now)
        return torch.tensor([row.finished for row in self.rows], dtype=torch.bool, device=input_ids.device)


class Engine:
    """Admits rows, batches them and generates on one thread, on whatever model the slot holds."""

    def __init__(self, slot: ModelSlot, config: ServeConfig) -> None:
        self.slot, self.config = slot, config
        self.pending: deque[Row] = deque()
        self.in_flight = 0
        self.batches = 0
        self.condition = threading.Condition()
        self.stopped = False
        self.thread = threading.Thread(target=self._loop, name="codemill-engine", daemon=True)

    def start(self) -> None:
        """Start the generation thread."""
        self.thread.start()

    def stop(self) -> None:
        """End the generation thread after its current batch; queued rows end as cancelled."""
        with self.condition:
            self.stopped = True
            self.condition.notify_all()
        self.thread.join(timeout=30)

    def submit(self, rows: Sequence[Row]) -> None:
        """Queue ``rows`` (one request's); raises :class:`Busy` if they don't fit in ``max_in_flight``."""
        with self.condition:
            if self.in_flight + len(rows) > self.config.max_in_flight:
                raise Busy(
                    f"{self.in_flight} rows in flight (serve.max_in_flight={self.config.max_in_flight})"
                )
            self.in_flight += len(rows)
            self.pending.extend(rows)
            self.condition.notify()

    def _take_batch(self) -> list[Row]:
        """The next batch: the oldest row and the queued rows that share its decoding, up to the size."""
        with self.condition:
            while not self.pending and not self.stopped:
                self.condition.wait()
            if self.stopped:
                return []
            limit = self.config.max_batch_size
            if len(self.pending) < limit and self.config.batch_wait_ms > 0:
                self.condition.wait_for(
                    lambda: len(self.pending) >= limit or self.stopped, self.config.batch_wait_ms / 1000
                )
            decoding = self.pending[0].decoding
            batch = [row for row in self.pending if row.decoding == decoding][:limit]
            for row in batch:
                self.pending.remove(row)
            return batch

    def _release(self, rows: Sequence[Row]) -> None:
        with self.condition:
            self.in_flight -= len(rows)

    def _loop(self) -> None:
        while True:
            batch = self._take_batch()
            if not batch:
                break
            try:
                self._generate(batch, self.slot.current)
            except Exception:
                log.exception("generation failed for a batch of %d rows", len(batch))
                for row in batch:
                    row.finish("error")
            finally:
                self._release(batch)
                self.batches += 1
        with self.condition:
            for row in self.pending:
                row.finish(CANCELLED)
            self.pending.clear()

    @torch.no_grad()
    def _generate(self, rows: list[Row], served: LoadedModel) -> None:
        now = time.monotonic()
        live = []
        for row in rows:
            row.version = served.version
            if row.cancelled:
                row.finish(CANCELLED)
            elif now >= row.deadline:
                row.finish(TIMEOUT)
            else:
                live.append(row)
        if not live:
            return
        model, tokenizer = served.model, served.tokenizer
        tokenizer.padding_side = "left"
        batch = tokenizer(
            [row.prompt for row in live], return_tensors="pt", padding=True, add_special_tokens=False
        )
        batch = {name: tensor.to(model.device) for name, tensor in batch.items() if name != "token_type_ids"}
        for row, mask in zip(live, batch["attention_mask"], strict=True):
            row.prompt_tokens = int(mask.sum())
        end_tokens = {token for row in live for token in row.end_tokens}
        end_ids = frozenset(
            [tokenizer.eos_token_id, *tokenizer.convert_tokens_to_ids(sorted(end_tokens))]
        ) - {None}
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        decoding = live[0].decoding
        if decoding.seed is not None:
            torch.manual_seed(decoding.seed)
        model.generate(
            **batch,
            max_new_tokens=max(row.max_tokens for row in live),
            pad_token_id=pad_id,
            use_cache=True,
            stopping_criteria=StoppingCriteriaList([RowsCriteria(live, tokenizer, end_ids)]),
            **decoding.generate_kwargs(),
        )
        for row in live:
            row.finish(LENGTH)  # rows that ran out of new tokens before any criterion ended them
