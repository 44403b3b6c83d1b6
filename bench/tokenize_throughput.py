"""The tokenize stage's encoding against Hugging Face ``tokenizers``' own batch encoding, in one run.

The stage (``components/tokenize``) trains the byte-level BPE tokenizer, then encodes every document
(metadata prefixes, per-shard tasks on the executor), packs and writes the uint16 token files. The
reference encodes the same documents' text with the trained tokenizer's ``encode_batch`` (Rust, all
threads) and keeps the ids in memory. Throughput is content MB/s of each; the ratio is stage / reference.

    python bench/tokenize_throughput.py [--files 400] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from benchdoc import publish  # noqa: E402
from corpora import stdlib_clean_shard  # noqa: E402

SECTION = "## Tokenize stage vs tokenizers' batch encoding"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=400, help="standard-library modules in the corpus")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md")
    args = parser.parse_args()

    import pyarrow.parquet as pq
    from tokenizers import Tokenizer

    from components import tokenize
    from components.params import load_params
    from components.stage_runner import call_stage
    from components.tokens.tokenizer import TOKENIZER_DIR

    params = load_params(str(PROJECT_ROOT / "params.yaml"))
    with tempfile.TemporaryDirectory(prefix="tokenize-throughput-") as scratch:
        clean = stdlib_clean_shard(Path(scratch) / "clean", args.files)
        report = call_stage(tokenize.STAGE, params, [str(clean)], f"{scratch}/tokenize")
        texts = pq.read_table(clean).column("content").to_pylist()
        tokenizer = Tokenizer.from_file(f"{scratch}/tokenize/{TOKENIZER_DIR}/tokenizer.json")
        started = time.perf_counter()
        encoded = tokenizer.encode_batch(texts, add_special_tokens=False)
        reference_s = time.perf_counter() - started
    megabytes = sum(len(text.encode("utf-8")) for text in texts) / 1e6
    stage_s = float(report.metrics["seconds.encode"])
    stage_rate, reference_rate = megabytes / stage_s, megabytes / reference_s
    tokens = sum(len(item.ids) for item in encoded)
    command = "python bench/tokenize_throughput.py " + " ".join(sys.argv[1:])
    lines = [
        SECTION,
        "",
        f"`{command.strip()}` ({platform.machine()}, {os.cpu_count()} cores, {len(texts)} files, "
        f"{megabytes:.1f} MB, {tokens / 1e6:.2f} M tokens, vocabulary {params.tokenize.vocab_size})",
        "",
        "| | seconds | MB/s |",
        "| --- | --- | --- |",
        f"| tokenize stage: encode + pack + write (executor: {params.executor.workers} workers) "
        f"| {stage_s:.2f} | {stage_rate:.2f} |",
        f"| tokenizers `encode_batch`, ids in memory | {reference_s:.2f} | {reference_rate:.2f} |",
        f"| (the stage's tokenizer training, before encoding) | "
        f"{float(report.metrics['seconds.train_tokenizer']):.2f} | |",
        "",
        f"tokenize: {stage_rate / reference_rate:.2f}x",
        "",
    ]
    section = "\n".join(lines)
    publish(section, write=not args.no_write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
