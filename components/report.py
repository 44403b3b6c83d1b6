"""The report every stage writes to ``reports/<stage>.json`` (DVC metrics) and logs to MLflow."""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class ShardCounts:
    """Documents and bytes in/out, and drops by reason, of one unit of work (a shard, a source).

    Per-shard results extend it with their own fields; :meth:`StageReport.add_counts` sums them.
    """

    files_in: int = 0
    files_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    drops: Counter[str] = field(default_factory=Counter)


@dataclass
class StageReport:
    """Counts in/out, drops per reason, time and throughput of one stage run.

    ``metrics`` holds stage-specific numbers (logged to MLflow as metrics, e.g. ``dedup_ratio``);
    ``details`` holds anything else worth keeping in the JSON (e.g. the list of dropped files).
    """

    stage: str
    files_in: int = 0
    files_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    drops: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def count_drop(self, reason: str, n: int = 1) -> None:
        """Count ``n`` documents dropped (or skipped) for ``reason``."""
        self.drops[reason] = self.drops.get(reason, 0) + n

    def merge_drops(self, counts: Counter[str] | dict[str, int]) -> None:
        """Add a mapping of reason -> count to the drops."""
        for reason, n in counts.items():
            self.count_drop(reason, n)

    def add_counts(self, counts: ShardCounts) -> None:
        """Add one unit's files, bytes and drops to the report's totals."""
        self.files_in += counts.files_in
        self.files_out += counts.files_out
        self.bytes_in += counts.bytes_in
        self.bytes_out += counts.bytes_out
        self.merge_drops(counts.drops)

    @property
    def mb_per_s(self) -> float:
        """Input throughput in MB/s (0 when no time was measured)."""
        return self.bytes_in / 1e6 / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: every field plus ``mb_per_s``, drops sorted by reason."""
        data = asdict(self)
        data["drops"] = dict(sorted(self.drops.items()))
        data["seconds"] = round(self.seconds, 3)
        data["mb_per_s"] = round(self.mb_per_s, 3)
        return data

    def numeric_metrics(self) -> dict[str, float]:
        """Flat numeric metrics for MLflow: counts, ``drops.<reason>``, throughput and stage metrics."""
        flat: dict[str, float] = {
            "files_in": self.files_in,
            "files_out": self.files_out,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "seconds": self.seconds,
            "mb_per_s": self.mb_per_s,
        }
        flat.update({f"drops.{reason}": n for reason, n in self.drops.items()})
        flat.update(self.metrics)
        return flat

    def write(self, path: str | Path) -> None:
        """Write the JSON report atomically (temporary file + rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, path)


def read_report(path: str | Path) -> dict[str, Any]:
    """Load a report written by :meth:`StageReport.write`."""
    return json.loads(Path(path).read_text(encoding="utf-8"))
