"""The packed token files: split by repo, StarCoder metadata prefixes, and the arrays on disk.

A split ``<name>`` is stored nanoGPT style as:

- ``<name>.bin``: every document's tokens, each followed by ``<|endoftext|>``, concatenated (uint16 when
  the vocabulary fits, else uint32), readable with ``np.memmap``;
- ``<name>.docs.npy``: int64 start offset of each document in the ``.bin``;
- ``<name>.doc_bytes.npy``: int64 UTF-8 bytes of each document's content (metadata not counted);
- ``<name>.ids.json``: the documents' ids, in the same order.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from components.tokens.tokenizer import SpecialIds, TokenCodec

SPLITS = ("train", "val")
INDEX_FILE = "index.json"


def unit_hash(*parts: str) -> float:
    """A deterministic number in [0, 1) from strings (same on every machine and run)."""
    digest = hashlib.sha256("\0".join(parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_repos(repos: Sequence[str], val_fraction: float) -> frozenset[str]:
    """The validation repos: those whose name hashes below ``val_fraction``.

    At least one repo goes to each split: with none below the fraction the lowest hash is held out,
    with all below it the highest hash trains. Needs two distinct repos (``ValueError`` otherwise).
    """
    ranked = sorted(set(repos), key=lambda repo: (unit_hash("split", repo), repo))
    if len(ranked) < 2:
        raise ValueError(f"found {len(ranked)} repo(s); a split by repo needs at least 2")
    held_out = [repo for repo in ranked if unit_hash("split", repo) < val_fraction]
    held_out = held_out[: len(ranked) - 1] or ranked[:1]
    return frozenset(held_out)


def mixture_repeats(document_id: str, weight: float, seed: int) -> int:
    """How many times a training document is written for ``weight``: ``floor(weight)``, plus one with
    probability ``weight - floor(weight)`` (deterministic per document id and seed)."""
    whole = int(weight)
    return whole + int(unit_hash("mixture", str(seed), document_id) < weight - whole)


def wants_metadata(document_id: str, seed: int, rate: float) -> bool:
    """Whether a training document gets the metadata prefix (deterministic per document id and seed)."""
    return unit_hash("metadata", str(seed), document_id) < rate


@dataclass(frozen=True)
class Document:
    """What packing needs of a document."""

    id: str
    repo: str
    path: str
    content: str
    stars: int | None
    lang: str | None = None


def encode_documents(
    codec: TokenCodec, documents: Sequence[Document], metadata: Sequence[bool]
) -> list[np.ndarray]:
    """Tokens of each document: ``[metadata prefix] content <|endoftext|>``.

    The prefix is ``<reponame>REPO<filename>PATH<gh_stars>STARS\\n`` (stars 0 when unknown), each text
    piece encoded on its own so :func:`metadata_length` can find where the content starts.
    """
    special = codec.special
    contents = codec.encode_batch([d.content for d in documents], [d.lang for d in documents])
    prefixed = [document for document, wanted in zip(documents, metadata, strict=True) if wanted]
    fields = iter(
        codec.encode_batch([text for d in prefixed for text in (d.repo, d.path, str(d.stars or 0), "\n")])
    )
    eos = np.array([special.eos], dtype=np.int64)
    encoded = []
    for content, wanted in zip(contents, metadata, strict=True):
        pieces = []
        if wanted:
            for marker in (special.reponame, special.filename, special.gh_stars):
                pieces += [np.array([marker], dtype=np.int64), next(fields)]
            pieces.append(next(fields))  # the newline, its own token
        encoded.append(np.concatenate([*pieces, content, eos]))
    return encoded


def metadata_length(tokens: np.ndarray, special: SpecialIds, newline_id: int) -> int:
    """Number of leading tokens that are a metadata prefix (0 if the document has none)."""
    if len(tokens) == 0 or tokens[0] != special.reponame:
        return 0
    stars_at = int(np.flatnonzero(tokens == special.gh_stars)[0])
    newline_at = stars_at + 1 + int(np.flatnonzero(tokens[stars_at + 1 :] == newline_id)[0])
    return newline_at + 1


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab <= 65535), else uint32 (nanoGPT)."""
    return np.dtype(np.uint16 if vocab_size <= 65535 else np.uint32)


def split_paths(directory: str | Path, split: str) -> dict[str, Path]:
    """Paths of a split's files: ``bin``, ``docs``, ``doc_bytes``, ``ids``."""
    directory = Path(directory)
    return {
        "bin": directory / f"{split}.bin",
        "docs": directory / f"{split}.docs.npy",
        "doc_bytes": directory / f"{split}.doc_bytes.npy",
        "ids": directory / f"{split}.ids.json",
    }


def write_split_index(
    directory: str | Path,
    split: str,
    lengths: Sequence[int] | np.ndarray,
    ids: Sequence[str],
    doc_bytes: Sequence[int] | np.ndarray,
) -> None:
    """Write a split's document index (start offsets, byte counts, ids) for tokens already in its ``.bin``."""
    paths = split_paths(directory, split)
    sizes = np.asarray(lengths, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    np.save(paths["docs"], starts)
    np.save(paths["doc_bytes"], np.asarray(doc_bytes, dtype=np.int64))
    paths["ids"].write_text(json.dumps(list(ids)) + "\n", encoding="utf-8")
