"""Do two runs of the pipeline give the same results? Data shards byte for byte, training loss curves.

Usage: ``python bench/same_results.py BASE_DIR NEW_DIR [--tolerance 1e-6]``, where each directory is a
project checkout on which ``dvc repro anneal`` (or more) has run. Prints one line per data stage
(identical or not) and per training stage (largest loss difference), then ``same_results: yes|no``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

DATA_STAGES = ("ingest", "curate", "dedup", "clean", "tokenize")
TRAINING_STAGES = ("pretrain", "anneal")


def tree_digest(directory: Path) -> str:
    """sha256 over every file's relative path and bytes, in path order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(directory)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def curve_difference(base: Path, new: Path) -> float:
    """Largest absolute difference of the logged training and validation losses of two training.json."""
    a, b = (json.loads(path.read_text()) for path in (base, new))
    pairs = [
        (x[key], y[key])
        for curve, key in (("curve", "loss"), ("val_curve", "val_loss"))
        for x, y in zip(a[curve], b[curve], strict=True)
    ]
    return max(abs(x - y) for x, y in pairs)


def main() -> int:
    """Compare the runs; exit code 0 when they give the same results."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("base", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--tolerance", type=float, default=1e-6, help="largest loss difference allowed")
    args = parser.parse_args()
    same = True
    for stage in DATA_STAGES:
        identical = tree_digest(args.base / "data" / stage) == tree_digest(args.new / "data" / stage)
        same &= identical
        print(f"data/{stage}: {'byte-identical' if identical else 'DIFFERENT'}")
    for stage in TRAINING_STAGES:
        difference = curve_difference(
            args.base / "models" / stage / "training.json", args.new / "models" / stage / "training.json"
        )
        same &= difference <= args.tolerance
        print(f"models/{stage}: largest loss difference {difference:.3g}")
    print(f"same_results: {'yes' if same else 'no'}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
