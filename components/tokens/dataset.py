"""What the trainer reads: fixed-length sequences packed from the tokenize stage's memory-mapped files.

Packing (CodeParrot's ConstantLengthDataset, nanoGPT's memory-mapped ``train.bin``): an epoch is the
split's documents (each ending with ``<|endoftext|>``) concatenated and cut into consecutive,
non-overlapping windows of ``seq_len + 1`` tokens (inputs ``[:-1]``, labels ``[1:]``).

- ``len(dataset)`` is ``tokens // (seq_len + 1)`` over the selected documents without FIM; the last
  partial window is dropped. FIM adds tokens (3 sentinels per FIM document), so an epoch with FIM has a
  few more windows' worth of tokens than are used; the rest is dropped too. (Should FIM ever shorten an
  epoch, its windows wrap around to the epoch's start.)
- Training split: epoch ``e`` visits the documents in a permutation seeded by ``(seed, e)``; document
  ``d`` (its index in the split) is FIM-transformed with a generator seeded by ``(seed, e, d)``. A
  metadata prefix stays in front; FIM permutes the code after it. So ``sequence(i)`` depends only on
  the seed and ``i``, not on call order, process or rank.
- Validation split: documents in file order (sorted by repo, path), never FIM: bits-per-byte is
  ``loss_nats / ln 2 * num_tokens / num_bytes`` and compares across tokenizers.
- An epoch's layout (order, lengths and the FIM-transformed documents) is built on first use and cached
  (the two most recent epochs); documents without FIM are read from the memory map, not copied. With
  FIM, building it decodes and re-encodes ``fim_rate`` of the split (~12 s for the 30 MB stdlib corpus
  on 2 busy cores); each process (or DataLoader worker) that reads the dataset builds its own.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from components.tokens.fim import apply_fim_batch
from components.tokens.packing import INDEX_FILE, SPLITS, metadata_length, split_paths
from components.tokens.tokenizer import TokenCodec, load_tokenizer

#: Documents FIM-transformed per batched decode/encode call while an epoch is built.
FIM_CHUNK = 4096
#: Epoch layouts kept in memory (a batch may straddle two epochs).
CACHED_EPOCHS = 2


def read_index(directory: str | Path) -> dict[str, Any]:
    """The ``index.json`` of a tokenize output: dtype, vocab_size, special ids, per-split counts."""
    path = Path(directory) / INDEX_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: no token index (run the tokenize stage first)")
    return json.loads(path.read_text(encoding="utf-8"))


@dataclass
class EpochLayout:
    """One epoch's document order, token lengths and FIM-transformed documents (by position)."""

    order: np.ndarray
    offsets: np.ndarray  # start of each position in the epoch's token stream, plus the total at the end
    replaced: dict[int, np.ndarray]
    windows: np.ndarray | None = None  # training order of the epoch's windows (None: stream order)

    @property
    def total(self) -> int:
        """Tokens in the epoch's stream."""
        return int(self.offsets[-1])


class TokenDataset:
    """Fixed-length training sequences from a split of a tokenize output directory."""

    def __init__(
        self,
        directory: str | Path,
        split: str,
        seq_len: int,
        seed: int,
        fim_rate: float = 0.0,
        fim_spm_rate: float = 0.5,
        doc_ids: Sequence[str] | None = None,
    ):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if seq_len < 1:
            raise ValueError(f"seq_len must be positive, got {seq_len}")
        self.directory = Path(directory)
        self.split = split
        self.seq_len = seq_len
        self.window = seq_len + 1
        self.seed = seed
        self.shuffle = split == "train"
        self.fim_rate = fim_rate if split == "train" else 0.0
        self.fim_spm_rate = fim_spm_rate
        self.index = read_index(directory)
        paths = split_paths(directory, split)
        self.tokens = self._open_tokens()
        self.starts = np.load(paths["docs"])
        self.lengths = np.diff(np.append(self.starts, len(self.tokens)))
        self.doc_bytes = np.load(paths["doc_bytes"])
        self.ids: list[str] = json.loads(paths["ids"].read_text(encoding="utf-8"))
        self.selected = self._select(doc_ids)
        self._length = int(self.lengths[self.selected].sum()) // self.window
        if self._length == 0:
            raise ValueError(
                f"{paths['bin']}: {self.num_tokens} tokens in the selected documents, fewer than one "
                f"sequence of seq_len + 1 = {self.window}"
            )
        self.codec = TokenCodec.load(directory) if self.fim_rate > 0 else None
        self._epochs: dict[int, EpochLayout] = {}

    def _open_tokens(self) -> np.memmap:
        """The split's token file, memory-mapped read-only."""
        path = split_paths(self.directory, self.split)["bin"]
        return np.memmap(path, dtype=np.dtype(self.index["dtype"]), mode="r")

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without the memory map or cached epochs (a DataLoader worker reopens the file)."""
        state = self.__dict__.copy()
        del state["tokens"]
        state["_epochs"] = {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.tokens = self._open_tokens()

    def _select(self, doc_ids: Sequence[str] | None) -> np.ndarray:
        """Indices of the documents to use, in split order (all, or those of ``doc_ids`` in this split)."""
        if doc_ids is None:
            return np.arange(len(self.ids), dtype=np.int64)
        wanted = set(doc_ids)
        selected = np.array([i for i, doc_id in enumerate(self.ids) if doc_id in wanted], dtype=np.int64)
        if len(selected) == 0:
            raise ValueError(
                f"none of the {len(wanted)} doc_ids is in the {self.split} split of {self.directory}"
            )
        return selected

    def __len__(self) -> int:
        """Sequences in one epoch."""
        return self._length

    @property
    def num_tokens(self) -> int:
        """Tokens of the selected documents as stored (EOS and metadata included, no FIM)."""
        return int(self.lengths[self.selected].sum())

    @property
    def num_bytes(self) -> int:
        """UTF-8 bytes of the selected documents' content (for bits-per-byte)."""
        return int(self.doc_bytes[self.selected].sum())

    def document(self, index: int) -> np.ndarray:
        """Stored tokens of document ``index`` of the split (ends with EOS)."""
        start = int(self.starts[index])
        return self.tokens[start : start + int(self.lengths[index])]

    def sequence(self, index: int) -> np.ndarray:
        """Sequence ``index`` (any epoch: ``index // len(self)``), int64 of shape ``(seq_len + 1,)``."""
        if index < 0:
            raise IndexError(f"sequence index must be >= 0, got {index}")
        epoch, position = divmod(index, self._length)
        return self._gather(self._epoch(epoch), position * self.window)

    def training_index(self, index: int) -> int:
        """The sequence (as ``sequence`` numbers them) that training visits ``index``-th.

        With shuffling, each epoch visits its windows in a seeded permutation, so a micro-batch mixes
        windows from across the corpus instead of consecutive pieces of one or two documents.
        """
        epoch, position = divmod(index, self._length)
        windows = self._epoch(epoch).windows
        return epoch * self._length + (int(windows[position]) if windows is not None else position)

    def batch(self, step: int, micro_batch: int, rank: int = 0, world_size: int = 1) -> torch.Tensor:
        """LongTensor ``(micro_batch, seq_len + 1)``; row j: ``training_index((step * world_size + rank)
        * micro_batch + j)``.

        Data-parallel ranks get disjoint sequences, and a run resumed at ``step`` gets the same batches.
        """
        first = (step * world_size + rank) * micro_batch
        rows = [self.sequence(self.training_index(first + j)) for j in range(micro_batch)]
        return torch.from_numpy(np.stack(rows))

    def _epoch(self, epoch: int) -> EpochLayout:
        """The (cached) layout of ``epoch``."""
        if epoch not in self._epochs:
            if len(self._epochs) >= CACHED_EPOCHS:
                del self._epochs[min(self._epochs)]
            self._epochs[epoch] = self._build_epoch(epoch)
        return self._epochs[epoch]

    def _build_epoch(self, epoch: int) -> EpochLayout:
        """Order the documents for ``epoch`` and apply FIM (see the module docstring)."""
        order = self.selected
        if self.shuffle:
            order = order[np.random.default_rng([self.seed, epoch]).permutation(len(order))]
        lengths = self.lengths[order].copy()
        replaced: dict[int, np.ndarray] = {}
        if self.codec is not None:
            special, newline_id = self.codec.special, self.codec.newline_id
            for chunk_start in range(0, len(order), FIM_CHUNK):
                positions = range(chunk_start, min(chunk_start + FIM_CHUNK, len(order)))
                stored = [self.document(int(order[p])) for p in positions]
                prefix = [metadata_length(tokens, special, newline_id) for tokens in stored]
                bodies = [tokens[n:-1] for tokens, n in zip(stored, prefix, strict=True)]
                rngs = [np.random.default_rng([self.seed, epoch, int(order[p])]) for p in positions]
                for k, body in apply_fim_batch(
                    bodies, self.codec, rngs, self.fim_rate, self.fim_spm_rate
                ).items():
                    tokens = stored[k]
                    joined = np.concatenate([tokens[: prefix[k]], body, tokens[-1:]])
                    replaced[positions[k]] = joined.astype(self.tokens.dtype)
                    lengths[positions[k]] = len(replaced[positions[k]])
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        windows = (
            np.random.default_rng([self.seed, epoch, 1]).permutation(self._length) if self.shuffle else None
        )
        return EpochLayout(order=order, offsets=offsets, replaced=replaced, windows=windows)

    def _gather(self, layout: EpochLayout, start: int) -> np.ndarray:
        """``seq_len + 1`` tokens of the epoch's stream from ``start`` (wrapping around at its end)."""
        start %= layout.total
        position = int(np.searchsorted(layout.offsets, start, side="right")) - 1
        skip = start - int(layout.offsets[position])
        pieces, needed = [], self.window
        while needed > 0:
            position %= len(layout.order)
            tokens = layout.replaced.get(position)
            if tokens is None:
                tokens = self.document(int(layout.order[position]))
            piece = tokens[skip : skip + needed]
            pieces.append(piece)
            needed -= len(piece)
            skip = 0
            position += 1
        return np.concatenate(pieces).astype(np.int64)


class TokenizedData:
    """An opened tokenize output: its index, tokenizer and validation set, read once and handed around.

    The training engine and the evaluate stage get one of these instead of a path to reopen.
    """

    def __init__(self, directory: str | Path, seq_len: int, seed: int) -> None:
        self.directory = Path(directory)
        self.seq_len = seq_len
        self.seed = seed
        self.index = read_index(directory)

    @cached_property
    def tokenizer(self) -> Any:
        """The Hugging Face tokenizer (loaded on first use)."""
        return load_tokenizer(self.directory)

    @cached_property
    def val(self) -> TokenDataset:
        """The validation split: documents in file order, never FIM."""
        return TokenDataset(self.directory, "val", self.seq_len, self.seed)

    @property
    def vocab_size(self) -> int:
        """Tokens in the vocabulary."""
        return int(self.index["vocab_size"])

    @property
    def eos_id(self) -> int:
        """The id of ``<|endoftext|>``."""
        return int(self.index["eos_id"])

    @property
    def val_bytes_per_token(self) -> float:
        """UTF-8 bytes per stored token of the validation split (for bits per byte)."""
        stats = self.index["splits"]["val"]
        return stats["bytes"] / stats["tokens"]

    def train(
        self, fim_rate: float = 0.0, fim_spm_rate: float = 0.5, doc_ids: Sequence[str] | None = None
    ) -> TokenDataset:
        """The training split (optionally some of its documents), with FIM per epoch."""
        return TokenDataset(
            self.directory, "train", self.seq_len, self.seed, fim_rate, fim_spm_rate, doc_ids=doc_ids
        )


__all__ = ["TokenDataset", "TokenizedData", "load_tokenizer", "read_index"]
