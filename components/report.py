"""What stages report: ``reports/<stage>.json`` (DVC metrics), what tracking logs, and the eval report.

- :class:`ShardResult`: files and bytes in/out, drops per reason and named counters of one unit of work
  (a shard, a read task). The stage runner sums them into the :class:`StageReport`.
- :class:`StageReport`: counts only (no lists that grow with the corpus: dropped documents go to the
  stage's exclusion dataset, see ``components/stage_runner.py``), plus what the stage wants tracked:
  ``params``, ``artifacts`` and ``datasets`` are logged by ``components/tracking.py`` and are not part
  of the JSON.
- ``reports/eval.json``: :func:`write_eval_report` / :func:`read_eval_scores`, the one reader. Scores
  are keyed by their MLflow spelling (``pass_at_1``), the one spelling params and tags use.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: The eval report the evaluate stage writes and the register stage, summary and ablations read.
EVAL_REPORT = "reports/eval.json"


def metric_key(name: str) -> str:
    """A metric name as MLflow accepts it in keys: ``pass@1`` -> ``pass_at_1`` (only ``[\\w.\\- :/]``)."""
    return re.sub(r"[^\w.\- :/]", "_", name.replace("@", "_at_"))


@dataclass
class ShardResult:
    """Documents and bytes in/out, drops by reason, and named counters (summed) of one unit of work."""

    files_in: int = 0
    files_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    drops: Counter[str] = field(default_factory=Counter)
    #: Stage-specific totals summed over units, e.g. ``pii.email`` or ``lang.python.kept``.
    counters: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True)
class Artifact:
    """A file or directory to log to the stage's MLflow run, under ``artifact_path``."""

    path: str
    artifact_path: str | None = None


@dataclass
class StageReport:
    """Counts in/out, drops per reason, time and throughput of one stage run, and what to track.

    ``metrics`` holds stage-specific numbers (logged to MLflow as metrics, e.g. ``dedup_ratio``);
    ``details`` holds other small facts worth keeping in the JSON (counts, names, settings).
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
    #: Logged by tracking, not written to the JSON: params, artifacts, and extra input datasets.
    params: dict[str, Any] = field(default_factory=dict)
    artifacts: list[Artifact] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)

    def count_drop(self, reason: str, n: int = 1) -> None:
        """Count ``n`` documents dropped (or skipped) for ``reason``."""
        self.drops[reason] = self.drops.get(reason, 0) + n

    def merge_drops(self, counts: Counter[str] | dict[str, int]) -> None:
        """Add a mapping of reason -> count to the drops."""
        for reason, n in counts.items():
            self.count_drop(reason, n)

    def add(self, result: ShardResult) -> None:
        """Add one unit's files, bytes and drops to the totals (its counters are the stage's to use)."""
        self.files_in += result.files_in
        self.files_out += result.files_out
        self.bytes_in += result.bytes_in
        self.bytes_out += result.bytes_out
        self.merge_drops(result.drops)

    @property
    def mb_per_s(self) -> float:
        """Input throughput in MB/s (0 when no time was measured)."""
        return self.bytes_in / 1e6 / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: the counted fields plus ``mb_per_s``, drops sorted by reason."""
        data = asdict(self)
        for tracked_only in ("params", "artifacts", "datasets"):
            del data[tracked_only]
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
        write_json(path, self.to_dict())


def write_json(path: str | Path, content: Any) -> None:
    """Write ``content`` as indented, key-sorted JSON, atomically (temporary file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_report(path: str | Path) -> dict[str, Any]:
    """Load a report written by :meth:`StageReport.write`."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_eval_report(
    path: str | Path,
    models: dict[str, dict[str, Any]],
    settings: dict[str, Any],
    comparisons: dict[str, Any] | None = None,
) -> None:
    """Write ``{"models": {model: {score: value}}, "comparisons": {...}, "settings": {...}}``, score names
    as MLflow keys."""
    keyed = {
        model: {metric_key(name): value for name, value in scores.items()} for model, scores in models.items()
    }
    write_json(path, {"models": keyed, "comparisons": comparisons or {}, "settings": settings})


def read_eval_report(path: str | Path = EVAL_REPORT) -> dict[str, Any]:
    """The whole eval report (``{}`` when the file does not exist); a bad file names itself."""
    path = Path(path)
    if not path.exists():
        return {}
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: invalid JSON: {exc}") from exc
    if not isinstance(report, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return report


def read_eval_scores(path: str | Path = EVAL_REPORT) -> dict[str, dict[str, float]]:
    """The numeric scores of each evaluated model (``{}`` when there is no report)."""
    models = read_eval_report(path).get("models") or {}
    return {
        model: {
            name: float(value)
            for name, value in sorted(scores.items())
            if isinstance(value, int | float) and not isinstance(value, bool)
        }
        for model, scores in models.items()
    }


def intervals_apart(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Whether two score intervals do not overlap (a difference beyond both runs' uncertainty)."""
    return a[1] < b[0] or b[1] < a[0]
