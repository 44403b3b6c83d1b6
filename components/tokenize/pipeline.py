"""The tokenize stage: train the tokenizer on the training split and pack both splits into token files.

Steps: read every document of the input shards, sorted by (repo, path); hold out whole repos for
validation (:func:`~components.tokenize.packing.split_repos`); train byte-level BPE on the training
split; encode training documents (a StarCoder metadata prefix on a ``metadata_rate`` share) and
validation documents (never a prefix, never FIM, so bits-per-byte compares across runs); write
``<out>/tokenizer/`` (Hugging Face format), the split files and ``<out>/index.json``.

The documents are held in memory and encoded with the tokenizer's Rust threads rather than mapped per
shard: the tokenizer must see the whole training split first, and the outputs are global arrays.
FIM is not applied here but per epoch by :class:`components.tokenize.dataset.TokenDataset`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from components.errors import StageError
from components.report import StageReport
from components.shards import atomic_output_dir, iter_tables, list_shards, table_bytes
from components.tokenize.packing import (
    INDEX_FILE,
    SPLITS,
    Document,
    encode_documents,
    metadata_length,
    split_repos,
    token_dtype,
    wants_metadata,
    write_split,
)
from components.tokenize.tokenizer import TOKENIZER_DIR, TokenCodec, to_transformers, train_tokenizer

if TYPE_CHECKING:  # components.config imports this package's config: no runtime import back
    from components.config import Params
    from components.stage import StageIO

INDEX_FORMAT = 1
COLUMNS = ["id", "repo", "path", "content", "stars", "size_bytes"]
EMPTY_CONTENT = "empty_content"


def read_documents(directory: str, report: StageReport) -> list[Document]:
    """Every non-empty document of the shards in ``directory``, sorted by (repo, path)."""
    tables = list(iter_tables(directory, columns=COLUMNS))
    table = pa.concat_tables(tables).sort_by([("repo", "ascending"), ("path", "ascending")])
    report.files_in = table.num_rows
    report.bytes_in = table_bytes(table)
    documents = []
    for row in table.to_pylist():
        if not row["content"]:
            report.count_drop(EMPTY_CONTENT)
            continue
        documents.append(Document(row["id"], row["repo"], row["path"], row["content"], row["stars"]))
    return documents


def tokenizer_sample(documents: list[Document], max_bytes: int | None) -> list[str]:
    """Texts to train the tokenizer on: all, or the documents in id order up to ``max_bytes``."""
    if max_bytes is None:
        return [document.content for document in documents]
    texts, total = [], 0
    for document in sorted(documents, key=lambda d: d.id):
        size = len(document.content.encode("utf-8"))
        if texts and total + size > max_bytes:
            break
        texts.append(document.content)
        total += size
    return texts


def split_stats(documents: list[Document], tokens: list[np.ndarray], codec: TokenCodec) -> dict[str, Any]:
    """Counts of one split for index.json (``content_tokens``: without metadata prefixes and EOS)."""
    total = int(sum(len(t) for t in tokens))
    prefixes = [metadata_length(t, codec.special, codec.newline_id) for t in tokens]
    content_tokens = total - len(documents) - sum(prefixes)
    chars = sum(len(document.content) for document in documents)
    return {
        "documents": len(documents),
        "tokens": total,
        "content_tokens": content_tokens,
        "bytes": sum(len(document.content.encode("utf-8")) for document in documents),
        "chars": chars,
        "chars_per_token": round(chars / max(content_tokens, 1), 4),
        "repos": len({document.repo for document in documents}),
        "metadata_documents": sum(1 for length in prefixes if length),
    }


def run(params: Params, io: StageIO) -> StageReport:
    """Train the byte-level BPE tokenizer and pack the train/val token files the trainer reads."""
    config = params.tokenize
    if len(io.inputs) != 1 or not io.output:
        raise StageError("tokenize: needs one --input (the clean shards) and --output")
    if "://" in io.output:
        raise StageError(
            f"tokenize: --output {io.output}: must be a local directory (training memory-maps it)"
        )
    report = StageReport("tokenize")
    list_shards(io.inputs[0])  # a clear error when the input is missing
    documents = read_documents(io.inputs[0], report)
    try:
        val_repos = split_repos([document.repo for document in documents], config.val_fraction)
    except ValueError as exc:
        raise StageError(
            f"tokenize: {io.inputs[0]}: cannot hold out tokenize.val_fraction by repo: {exc}"
        ) from exc
    splits = {
        "train": [document for document in documents if document.repo not in val_repos],
        "val": [document for document in documents if document.repo in val_repos],
    }

    start = time.perf_counter()
    tokenizer = train_tokenizer(
        tokenizer_sample(splits["train"], config.train_bytes), config.vocab_size, config.min_frequency
    )
    train_seconds = time.perf_counter() - start
    codec = TokenCodec(tokenizer)
    dtype = token_dtype(codec.vocab_size)

    start = time.perf_counter()
    stats = {}
    with atomic_output_dir(io.output) as tmp_dir:
        to_transformers(tokenizer).save_pretrained(str(Path(tmp_dir) / TOKENIZER_DIR))
        for split in SPLITS:
            chosen = splits[split]
            metadata = [
                split == "train" and wants_metadata(d.id, params.project.seed, config.metadata_rate)
                for d in chosen
            ]
            tokens = encode_documents(codec, chosen, metadata)
            doc_bytes = [len(d.content.encode("utf-8")) for d in chosen]
            write_split(tmp_dir, split, tokens, [d.id for d in chosen], doc_bytes, dtype)
            stats[split] = split_stats(chosen, tokens, codec)
        index = {
            "format": INDEX_FORMAT,
            "dtype": dtype.name,
            "vocab_size": codec.vocab_size,
            "eos_id": codec.special.eos,
            "pad_id": codec.special.fim_pad,
            "special_tokens": codec.special.by_token(),
            "seed": params.project.seed,
            "metadata_rate": config.metadata_rate,
            "val_fraction": config.val_fraction,
            "splits": stats,
        }
        (Path(tmp_dir) / INDEX_FILE).write_text(
            json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
    encode_seconds = time.perf_counter() - start
    _log_artifacts(io.output)

    report.files_out = sum(stats[split]["documents"] for split in SPLITS)
    report.bytes_out = sum(stats[split]["bytes"] for split in SPLITS)
    report.metrics = {
        "tokens.train": stats["train"]["tokens"],
        "tokens.val": stats["val"]["tokens"],
        "chars_per_token": stats["train"]["chars_per_token"],
        "chars_per_token.val": stats["val"]["chars_per_token"],
        "vocab_size": codec.vocab_size,
        "documents.train": stats["train"]["documents"],
        "documents.val": stats["val"]["documents"],
        "repos.train": stats["train"]["repos"],
        "repos.val": stats["val"]["repos"],
        "seconds.train_tokenizer": round(train_seconds, 3),
        "seconds.encode": round(encode_seconds, 3),
    }
    report.details = {"index": index, "val_repos": sorted(val_repos)}
    return report


def _log_artifacts(output: str) -> None:
    """Log the tokenizer folder and index.json to the active MLflow run (the stage runner opens one)."""
    import mlflow

    if mlflow.active_run() is None:
        return
    mlflow.log_artifacts(str(Path(output) / TOKENIZER_DIR), artifact_path=TOKENIZER_DIR)
    mlflow.log_artifact(str(Path(output) / INDEX_FILE))
