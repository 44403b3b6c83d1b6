"""The tokenize stage: train the tokenizer on the training split and pack both splits into token files.

Steps, the per-shard ones mapped with :func:`~components.executor.map_shards` (a local process pool, or
the Dask cluster when ``executor.address`` is set):

1. per shard, :func:`scan_shard`: counts, and the id, repo and UTF-8 size of every non-empty document;
2. global, in the stage process: hold out whole repos for validation
   (:func:`~components.tokens.packing.split_repos`) and train byte-level BPE on the training split,
   streamed shard by shard (BPE training does not depend on the order of its texts), or on its first
   ``train_bytes`` in id order;
3. per shard, :func:`encode_shard`: encode training documents (a StarCoder metadata prefix on a
   ``metadata_rate`` share) and validation documents (never a prefix, never FIM, so bits-per-byte
   compares across runs), returned as one flat token array per split plus per-document facts;
4. the stage appends each shard's tokens to a spool file per split in shard order, so it holds one batch
   of shards' tokens at a time (:data:`BATCH_CONTENT_BYTES`), then writes ``<out>/tokenizer/``
   (Hugging Face format), the split files with documents sorted by (repo, path) across shards, and
   ``<out>/index.json``.

The output is byte-identical whichever executor ran it and however the input is cut into shards (ties
on (repo, path) keep shard order). FIM is not applied here but per epoch by
:class:`components.tokens.dataset.TokenDataset`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tokenizers import Tokenizer

from components.errors import StageError
from components.executor import map_shards
from components.params import StageContext
from components.params.tokenize import TokenizeConfig
from components.report import Artifact, StageReport
from components.shards import list_shards, read_shard, table_bytes
from components.stage_runner import Exclusions, StageIO, shard_outputs
from components.tokens.packing import (
    INDEX_FILE,
    SPLITS,
    Document,
    encode_documents,
    metadata_length,
    mixture_repeats,
    split_paths,
    split_repos,
    token_dtype,
    wants_metadata,
    write_split_index,
)
from components.tokens.tokenizer import TOKENIZER_DIR, TokenCodec, to_transformers, train_tokenizer

INDEX_FORMAT = 1
COLUMNS = ["id", "repo", "path", "lang", "content", "stars"]
EMPTY_CONTENT = "empty_content"
#: Content bytes of the shards encoded per ``map_shards`` call: bounds the tokens the stage holds at once.
BATCH_CONTENT_BYTES = 256 * 2**20


def non_empty(table: pa.Table) -> pa.Table:
    """The rows of ``table`` with content, in order, plus a ``content_bytes`` column (UTF-8 bytes)."""
    sizes = pc.fill_null(pc.binary_length(table["content"]), 0)
    return table.append_column("content_bytes", sizes).filter(pc.greater(sizes, 0))


def read_documents(shard: str, columns: Sequence[str]) -> pa.Table:
    """The non-empty documents of ``shard`` (``columns``, ``content`` and ``content_bytes``), in order."""
    return non_empty(read_shard(shard, columns=list(dict.fromkeys([*columns, "content"]))))


@dataclasses.dataclass(frozen=True)
class ShardScan:
    """What the global steps need of one shard: counts, and each non-empty document's id, repo and size."""

    rows: int
    bytes_in: int
    ids: list[str]
    repos: list[str]
    sizes: list[int]

    @property
    def empty(self) -> int:
        """Documents dropped for empty content."""
        return self.rows - len(self.ids)


@dataclasses.dataclass(frozen=True)
class ScanTask:
    """One shard to scan, and where its dropped (empty) documents go."""

    shard: str
    excluded: str


def scan_shard(task: ScanTask) -> ShardScan:
    """Count one shard's rows and content bytes; list its non-empty documents and record the empty ones
    (module-level: mapped)."""
    table = read_shard(task.shard, columns=["id", "repo", "path", "lang", "content", "size_bytes"])
    kept = non_empty(table)
    excluded = Exclusions()
    empty = pc.equal(pc.fill_null(pc.binary_length(table["content"]), 0), 0)
    for document in table.filter(empty).drop_columns(["content"]).to_pylist():
        excluded.drop(EMPTY_CONTENT, document)
    excluded.write(task.excluded)
    return ShardScan(
        rows=table.num_rows,
        bytes_in=table_bytes(table),
        ids=kept["id"].to_pylist(),
        repos=kept["repo"].to_pylist(),
        sizes=kept["content_bytes"].to_pylist(),
    )


def tokenizer_texts(
    shards: Sequence[str], scans: Sequence[ShardScan], val_repos: frozenset[str], max_bytes: int | None
) -> Iterator[str]:
    """Texts to train the tokenizer on: every training document, or those in id order up to ``max_bytes``.

    Every document is streamed shard by shard. A sample is the training documents sorted by id (ties in
    shard order), taken until the next would pass ``max_bytes`` (at least one).
    """
    if max_bytes is None:
        for shard in shards:
            table = read_documents(shard, ["repo"])
            for repo, content in zip(table["repo"].to_pylist(), table["content"].to_pylist(), strict=True):
                if repo not in val_repos:
                    yield content
        return
    ranked = sorted(
        (doc_id, shard_index, row, size)
        for shard_index, scan in enumerate(scans)
        for row, (doc_id, repo, size) in enumerate(zip(scan.ids, scan.repos, scan.sizes, strict=True))
        if repo not in val_repos
    )
    chosen: list[tuple[int, int]] = []
    total = 0
    for _, shard_index, row, size in ranked:
        if chosen and total + size > max_bytes:
            break
        chosen.append((shard_index, row))
        total += size
    rows_by_shard: dict[int, list[int]] = {}
    for shard_index, row in chosen:
        rows_by_shard.setdefault(shard_index, []).append(row)
    contents: dict[tuple[int, int], str] = {}
    for shard_index, rows in sorted(rows_by_shard.items()):
        shard_contents = read_documents(shards[shard_index], [])["content"]
        contents.update({(shard_index, row): shard_contents[row].as_py() for row in rows})
    yield from (contents[key] for key in chosen)


@dataclasses.dataclass(frozen=True)
class EncodeTask:
    """One shard to encode with the trained tokenizer (picklable: runs in a worker or on the cluster)."""

    shard: str
    tokenizer_json: str
    val_repos: frozenset[str]
    seed: int
    metadata_rate: float


@dataclasses.dataclass(frozen=True)
class EncodedSplit:
    """One split's documents of one shard, in shard order: tokens concatenated, per-document facts."""

    tokens: np.ndarray  # every document's tokens (prefix, content, EOS), in the split file's dtype
    lengths: np.ndarray  # tokens per document (int64)
    prefix_lengths: np.ndarray  # metadata prefix tokens per document (int64, 0 without one)
    doc_bytes: np.ndarray  # UTF-8 bytes of each content (int64)
    chars: np.ndarray  # characters of each content (int64)
    ids: list[str]
    repos: list[str]
    paths: list[str]
    langs: list[str]


@functools.lru_cache(maxsize=1)
def codec_of(tokenizer_json: str) -> TokenCodec:
    """The codec of a serialized tokenizer (cached: a worker encodes many shards with the same one)."""
    return TokenCodec(Tokenizer.from_str(tokenizer_json))


def encode_shard(task: EncodeTask) -> dict[str, EncodedSplit]:
    """Encode one shard's non-empty documents, grouped by split (module-level: mapped over shards)."""
    codec = codec_of(task.tokenizer_json)
    dtype = token_dtype(codec.vocab_size)
    rows = read_documents(task.shard, COLUMNS).to_pylist()
    encoded = {}
    for split in SPLITS:
        chosen = [row for row in rows if (row["repo"] in task.val_repos) == (split == "val")]
        documents = [
            Document(r["id"], r["repo"], r["path"], r["content"], r["stars"], r["lang"]) for r in chosen
        ]
        metadata = [
            split == "train" and wants_metadata(d.id, task.seed, task.metadata_rate) for d in documents
        ]
        tokens = encode_documents(codec, documents, metadata)
        encoded[split] = EncodedSplit(
            tokens=np.concatenate(tokens).astype(dtype) if tokens else np.zeros(0, dtype=dtype),
            lengths=np.array([len(t) for t in tokens], dtype=np.int64),
            prefix_lengths=np.array(
                [metadata_length(t, codec.special, codec.newline_id) for t in tokens], dtype=np.int64
            ),
            doc_bytes=np.array([row["content_bytes"] for row in chosen], dtype=np.int64),
            chars=np.array([len(d.content) for d in documents], dtype=np.int64),
            ids=[d.id for d in documents],
            repos=[d.repo for d in documents],
            paths=[d.path for d in documents],
            langs=[d.lang or "" for d in documents],
        )
    return encoded


class SplitSpool:
    """A split's encoded documents in arrival order: tokens appended to a file, facts kept in memory."""

    def __init__(self, path: Path, dtype: np.dtype):
        self.path, self.dtype = path, dtype
        self.path.write_bytes(b"")
        self.parts: list[EncodedSplit] = []

    def add(self, part: EncodedSplit) -> None:
        """Append one shard's part (its tokens go to the spool file, not memory)."""
        with self.path.open("ab") as handle:
            part.tokens.tofile(handle)
        self.parts.append(dataclasses.replace(part, tokens=part.tokens[:0]))

    def write(
        self, directory: str | Path, split: str, repeats: Callable[[str, str, str], int]
    ) -> dict[str, Any]:
        """Write the split's files (documents sorted by (repo, path), each ``repeats(id, lang, repo)`` times),
        remove the spool; return its stats."""
        lengths, prefixes, doc_bytes, chars = (
            np.concatenate([getattr(part, name) for part in self.parts]).astype(np.int64)
            for name in ("lengths", "prefix_lengths", "doc_bytes", "chars")
        )
        ids, repos, paths, langs = (
            [value for part in self.parts for value in getattr(part, name)]
            for name in ("ids", "repos", "paths", "langs")
        )
        order = sorted(range(len(ids)), key=lambda i: (repos[i], paths[i]))  # stable: ties keep shard order
        order = [i for i in order for _ in range(repeats(ids[i], langs[i], repos[i]))]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        paths_out = split_paths(directory, split)
        with paths_out["bin"].open("wb") as out:
            if offsets[-1]:
                spool = np.memmap(self.path, dtype=self.dtype, mode="r")
                for i in order:
                    out.write(spool[offsets[i] : offsets[i + 1]].tobytes())
                del spool
        self.path.unlink()
        write_split_index(directory, split, lengths[order], [ids[i] for i in order], doc_bytes[order])
        stats = split_stats(
            lengths[order], prefixes[order], doc_bytes[order], chars[order], [repos[i] for i in order]
        )
        stats["languages"] = language_stats(lengths, langs, order)
        return stats


def split_stats(
    lengths: np.ndarray, prefixes: np.ndarray, doc_bytes: np.ndarray, chars: np.ndarray, repos: list[str]
) -> dict[str, Any]:
    """Counts of one split for index.json (``content_tokens``: without metadata prefixes and EOS)."""
    total = int(lengths.sum())
    content_tokens = total - len(lengths) - int(prefixes.sum())
    total_chars = int(chars.sum())
    return {
        "documents": len(lengths),
        "tokens": total,
        "content_tokens": content_tokens,
        "bytes": int(doc_bytes.sum()),
        "chars": total_chars,
        "chars_per_token": round(total_chars / max(content_tokens, 1), 4),
        "repos": len(set(repos)),
        "metadata_documents": int(np.count_nonzero(prefixes)),
    }


def language_stats(lengths: np.ndarray, langs: list[str], order: list[int]) -> dict[str, dict[str, int]]:
    """Per language: documents and tokens before weighting, and as written (``order`` repeats some)."""
    stats: dict[str, dict[str, int]] = {}
    for index, lang in enumerate(langs):
        entry = stats.setdefault(
            lang, {"documents": 0, "tokens": 0, "documents_written": 0, "tokens_written": 0}
        )
        entry["documents"] += 1
        entry["tokens"] += int(lengths[index])
    for index in order:
        stats[langs[index]]["documents_written"] += 1
        stats[langs[index]]["tokens_written"] += int(lengths[index])
    return dict(sorted(stats.items()))


def shard_batches(scans: Sequence[ShardScan], max_bytes: int) -> list[list[int]]:
    """Consecutive shard indices grouped up to ``max_bytes`` of content each (at least one shard)."""
    batches: list[list[int]] = []
    total = 0
    for index, scan in enumerate(scans):
        size = sum(scan.sizes)
        if not batches or total + size > max_bytes:
            batches.append([])
            total = 0
        batches[-1].append(index)
        total += size
    return batches


def run(config: TokenizeConfig, context: StageContext, io: StageIO) -> StageReport:
    """Train the byte-level BPE tokenizer and pack the train/val token files the trainer reads."""
    source, output = io.input("documents"), io.require_output("tokenize")
    if "://" in output:
        raise StageError(f"tokenize: --output {output}: must be a local directory (training memory-maps it)")
    report = StageReport("tokenize")
    shards = list_shards(source)
    seed, executor = context.seed, context.executor
    with shard_outputs(output) as out:
        scans = map_shards(scan_shard, [ScanTask(shard, out.exclusions(shard)) for shard in shards], executor)
        report.files_in = sum(scan.rows for scan in scans)
        report.bytes_in = sum(scan.bytes_in for scan in scans)
        empty = sum(scan.empty for scan in scans)
        if empty:
            report.count_drop(EMPTY_CONTENT, empty)
        try:
            val_repos = split_repos([repo for scan in scans for repo in scan.repos], config.val_fraction)
        except ValueError as exc:
            raise StageError(
                f"tokenize: {source}: cannot hold out tokenize.val_fraction by repo: {exc}"
            ) from exc

        start = time.perf_counter()
        texts = tokenizer_texts(shards, scans, val_repos, config.train_bytes)
        tokenizer = train_tokenizer(texts, config.vocab_size, config.min_frequency)
        train_seconds = time.perf_counter() - start
        codec = TokenCodec(tokenizer)
        dtype = token_dtype(codec.vocab_size)
        tokenizer_json = tokenizer.to_str()

        start = time.perf_counter()
        stats = {}
        tmp_dir = out.output
        to_transformers(tokenizer).save_pretrained(str(Path(tmp_dir) / TOKENIZER_DIR))
        spools = {split: SplitSpool(Path(tmp_dir) / f"{split}.spool", dtype) for split in SPLITS}
        for batch in shard_batches(scans, BATCH_CONTENT_BYTES):
            tasks = [
                EncodeTask(shards[i], tokenizer_json, val_repos, seed, config.metadata_rate) for i in batch
            ]
            for encoded in map_shards(encode_shard, tasks, executor):
                for split in SPLITS:
                    spools[split].add(encoded[split])

        def train_repeats(doc_id: str, lang: str, repo: str) -> int:
            return mixture_repeats(doc_id, config.mixture.weight(lang, repo), seed)

        stats["train"] = spools["train"].write(tmp_dir, "train", train_repeats)
        stats["val"] = spools["val"].write(tmp_dir, "val", lambda *_: 1)
        index = {
            "format": INDEX_FORMAT,
            "dtype": dtype.name,
            "vocab_size": codec.vocab_size,
            "eos_id": codec.special.eos,
            "pad_id": codec.special.fim_pad,
            "special_tokens": codec.special.by_token(),
            "seed": seed,
            "metadata_rate": config.metadata_rate,
            "val_fraction": config.val_fraction,
            "mixture": config.mixture.model_dump(),
            "splits": stats,
        }
        (Path(tmp_dir) / INDEX_FILE).write_text(
            json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
    encode_seconds = time.perf_counter() - start

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
    report.details = {
        "index": index,
        "val_repos": sorted(val_repos),
        "languages": {
            lang: {
                f"{split}_{key}": stats[split]["languages"].get(lang, {}).get(key, 0)
                for split in SPLITS
                for key in ("documents_written", "tokens_written")
            }
            for lang in sorted(set(stats["train"]["languages"]) | set(stats["val"]["languages"]))
        },
    }
    report.artifacts += [
        Artifact(str(Path(output) / TOKENIZER_DIR), TOKENIZER_DIR),
        Artifact(str(Path(output) / INDEX_FILE)),
    ]
    return report
