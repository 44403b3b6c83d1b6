"""The stage runner: one command line, checked inputs, atomic outputs, drops with reasons, tracking.

Every stage package defines one :class:`Stage`: its name, its named inputs, whether it writes an output,
and ``run(config, context, io) -> StageReport``, where ``config`` is what
:meth:`components.params.Params.stage_config` assembles for it and ``context`` the shared
:class:`~components.params.StageContext`. Its ``__main__`` is ``raise SystemExit(stage_main(STAGE))``;
``dvc.yaml`` calls that.

What the runner does for every stage, so no stage does it itself:

- inputs: ``--input`` paths are matched to the declared names in order and checked once; a missing one
  is an error naming the input, the path and the stage that makes it (from ``dvc.yaml``);
- tracking: the stage runs inside its MLflow run; the report's metrics, params, artifacts and datasets
  are logged by ``components/tracking.py`` (the only module that logs to MLflow);
- shard stages: :func:`shard_outputs` gives the atomic output folder and, beside it, the exclusion
  dataset ``<output>.excluded/`` (datatrove's exclusion writer): every dropped document with its reason
  and a detail, in Parquet, so a curator can open the rejects (``codemill inspect STAGE``) while the report
  keeps counts only. :class:`Exclusions` counts and records drops in a worker;
  :func:`run_shards` maps per-shard work on the executor and sums the :class:`ShardResult` s.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal, TypeVar

import pyarrow as pa

from components.corpus_stats import STATS_DIR, write_statistics
from components.errors import ParamsError, StageError
from components.executor import map_shards
from components.params import DEFAULT_PARAMS, Params, StageContext, flatten, load_params
from components.report import ShardResult, StageReport
from components.shards import atomic_output_dir, filesystem, list_shards, read_shard, write_shard

Task = TypeVar("Task")

#: What an input must be: shards (``part-*.parquet``), a tokenize output (``index.json``), an exported
#: model (``training.json``), a directory, or a file.
InputKind = Literal["shards", "tokens", "model", "dir", "file"]
EXCLUDED_SUFFIX = ".excluded"
HOLDOUT_SUFFIX = ".holdout"
#: The exclusion dataset: the dropped documents (content where there was any), why, and a detail.
EXCLUSION_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("repo", pa.string()),
        pa.field("path", pa.string()),
        pa.field("lang", pa.string()),
        pa.field("content", pa.string()),
        pa.field("size_bytes", pa.int64()),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string()),
    ]
)


@dataclass(frozen=True)
class Input:
    """One named input of a stage and what it must be."""

    name: str
    kind: InputKind = "shards"

    def problem(self, path: str) -> str | None:
        """Why ``path`` cannot serve as this input, or None."""
        fs, root = filesystem(path)
        if self.kind == "file":
            return None if fs.isfile(root) else "does not exist"
        if not fs.isdir(root):
            return "does not exist"
        marker = {"tokens": "index.json", "model": "training.json"}.get(self.kind)
        if marker and not fs.isfile(f"{root.rstrip('/')}/{marker}"):
            return f"has no {marker} (the stage that writes it did not finish)"
        if self.kind == "shards":
            try:
                list_shards(path)
            except FileNotFoundError:
                return "holds no part-*.parquet shards"
        return None


@dataclass(frozen=True)
class StageIO:
    """Where a stage reads (named inputs) and writes (one output path, or None)."""

    inputs: dict[str, str] = field(default_factory=dict)
    output: str | None = None

    def input(self, name: str) -> str:
        """The path of input ``name``."""
        return self.inputs[name]

    def require_output(self, stage: str) -> str:
        """The output path; a StageError when the stage was started without one."""
        if not self.output:
            raise StageError(f"{stage}: --output is required")
        return self.output


StageFn = Callable[[Any, StageContext, StageIO], StageReport]


@dataclass(frozen=True)
class Stage:
    """A stage: its name, named inputs (in ``--input`` order), whether it writes ``--output``, and ``run``."""

    name: str
    run: StageFn
    inputs: tuple[Input, ...] = ()
    has_output: bool = True
    #: ``(input documents or None, output) -> statistics`` (components/corpus_stats.py), written beside
    #: the report (``stats/<stage>.json`` and ``.png``) and logged under ``corpus_stats/``.
    statistics: Callable[[str | None, str], dict[str, dict[str, Any]]] | None = None

    def resolve(self, paths: Sequence[str], output: str | None) -> StageIO:
        """Match ``--input`` paths to the declared inputs and check each (errors name input and maker)."""
        if len(paths) != len(self.inputs):
            names = ", ".join(f"{spec.name} ({spec.kind})" for spec in self.inputs) or "none"
            raise StageError(f"{self.name}: expected {len(self.inputs)} --input ({names}), got {len(paths)}")
        for spec, path in zip(self.inputs, paths, strict=True):
            problem = spec.problem(path)
            if problem is not None:
                raise StageError(missing_input_message(self.name, spec.name, path, problem))
        if self.has_output and not output:
            raise StageError(f"{self.name}: --output is required")
        return StageIO({spec.name: path for spec, path in zip(self.inputs, paths, strict=True)}, output)


def missing_input_message(stage: str, name: str, path: str, problem: str) -> str:
    """``stage: input 'name' path problem; it is made by stage X (run `dvc repro X`)``."""
    from components.dvc_project import producer_of

    producer = producer_of(path)
    made_by = f"; it is made by stage {producer!r} (run `dvc repro {producer}`)" if producer else ""
    return f"{stage}: input {name!r}: {path} {problem}{made_by}"


def call_stage(stage: Stage, params: Params, inputs: Sequence[str], output: str | None) -> StageReport:
    """Run ``stage`` on ``params`` without tracking or timing (tests, benchmarks); inputs are checked."""
    return stage.run(params.stage_config(stage.name), params.context(), stage.resolve(inputs, output))


def run_stage(stage: Stage, params: Params, io: StageIO, report_path: str) -> StageReport:
    """Run ``stage`` inside its MLflow run, then write its report and log what it asks for."""
    from components import tracking

    config = params.stage_config(stage.name)
    context = params.context()
    with tracking.stage_run(stage.name, context, stage_params(params, stage.name)):
        start = time.perf_counter()
        try:
            report = stage.run(config, context, io)
        except StageError as exc:
            tracking.log_artifacts(exc.artifacts)
            raise
        report.seconds = time.perf_counter() - start
        if stage.statistics is not None and io.output:
            statistics = stage.statistics(io.inputs.get("documents"), io.output)
            report.artifacts += write_statistics(stage.name, statistics, Path(report_path).parent / STATS_DIR)
        report.write(report_path)
        outputs = [io.output] if io.output else []
        tracking.log_stage_result(report, report_path, list(io.inputs.values()), outputs)
    return report


def stage_params(params: Params, name: str) -> dict[str, Any]:
    """The params a stage run records: the shared context and its config, flattened. A stage that reads
    its section alone logs it under the section's name (``dedup.level``); a job logs its fields
    (``model.seq_len``, ``pretrain.lr``)."""
    config = params.stage_config(name)
    dumped = config.model_dump(mode="json", by_alias=True)
    shared = params.context().model_dump(mode="json", include={"project", "data", "executor"})
    section = next((alias for alias in Params.model_fields if getattr(params, alias) is config), None)
    own = {section.rstrip("_"): dumped} if section else dumped
    return flatten({**shared, **own})


def stage_main(stage: Stage, argv: list[str] | None = None) -> int:
    """Command-line entry of a stage (what ``dvc.yaml`` calls). Returns the exit code."""
    parser = argparse.ArgumentParser(prog=f"python -m components.{stage.name}", description=stage.run.__doc__)
    parser.add_argument("--params", default=DEFAULT_PARAMS, help="parameter file (default: params.yaml)")
    names = ", ".join(spec.name for spec in stage.inputs) or "none"
    parser.add_argument("--input", action="append", default=[], help=f"inputs in order: {names}")
    parser.add_argument("--output", default=None, help="output path")
    parser.add_argument("--report", default=f"reports/{stage.name}.json", help="report path (DVC metrics)")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
        report = run_stage(stage, params, stage.resolve(args.input, args.output), args.report)
    except (ParamsError, StageError, FileNotFoundError) as exc:
        print(f"codemill {stage.name}: error: {exc}", file=sys.stderr)
        return 2
    print(
        f"codemill {stage.name}: {report.files_in} files in, {report.files_out} out, "
        f"{report.bytes_in / 1e6:.1f} MB in, {report.seconds:.1f}s ({report.mb_per_s:.2f} MB/s)"
    )
    return 0


# ------------------------------------------------------------------------------------ shard stages
def excluded_path(output: str) -> str:
    """Where a stage's dropped documents go: ``<output>.excluded`` (beside the output)."""
    return output.rstrip("/") + EXCLUDED_SUFFIX


def holdout_path(output: str) -> str:
    """Where a stage sets documents aside for evaluation: ``<output>.holdout`` (beside the output)."""
    return output.rstrip("/") + HOLDOUT_SUFFIX


@dataclass(frozen=True)
class OutputDirs:
    """The temporary output, exclusion (and held-out) folders of a running stage (renamed on success)."""

    output: str
    excluded: str
    holdout: str = ""

    def shard(self, input_shard: str) -> str:
        """The output shard of the same name as ``input_shard``."""
        return f"{self.output}/{PurePosixPath(input_shard).name}"

    def exclusions(self, name: str) -> str:
        """The exclusion part named after a shard or task (``part-00003.parquet``)."""
        return f"{self.excluded}/{PurePosixPath(name).name}"

    def held_out(self, input_shard: str) -> str:
        """The held-out shard of the same name as ``input_shard``."""
        if not self.holdout:
            raise ValueError("this stage's outputs have no held-out dataset (shard_outputs(holdout=True))")
        return f"{self.holdout}/{PurePosixPath(input_shard).name}"


@contextlib.contextmanager
def shard_outputs(output: str, holdout: bool = False) -> Iterator[OutputDirs]:
    """The stage's output folder and its exclusion dataset (and, with ``holdout``, its held-out dataset),
    written to temporary folders that replace the previous ones only when the body succeeds (on failure
    they all stay as they were)."""
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(atomic_output_dir(output))
        tmp_excluded = stack.enter_context(atomic_output_dir(excluded_path(output)))
        tmp_holdout = stack.enter_context(atomic_output_dir(holdout_path(output))) if holdout else ""
        yield OutputDirs(tmp, tmp_excluded, tmp_holdout)


class Exclusions:
    """Counts dropped documents per reason and keeps them for the exclusion dataset (datatrove's
    ``exclusion_writer``): the one place a per-shard stage records a drop."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.rows: list[dict[str, Any]] = []

    def drop(self, reason: str, document: Mapping[str, Any], detail: str | None = None) -> None:
        """Count ``document`` (a row with some of the base columns) as dropped for ``reason``."""
        self.counts[reason] += 1
        row = {name: document.get(name) for name in EXCLUSION_SCHEMA.names[:6]}
        self.rows.append({**row, "reason": reason, "detail": detail})

    def merge(self, other: Exclusions) -> None:
        """Add another unit's drops to these."""
        self.counts.update(other.counts)
        self.rows.extend(other.rows)

    def write(self, path: str) -> None:
        """Write the dropped documents to ``path`` (an empty part when there are none, so the dataset
        exists on object stores too)."""
        write_shard(pa.Table.from_pylist(self.rows, schema=EXCLUSION_SCHEMA), path)


def run_shards(
    fn: Callable[[Task], ShardResult], tasks: Sequence[Task], context: StageContext, report: StageReport
) -> list[ShardResult]:
    """Map ``fn`` over ``tasks`` on the executor and add every result to ``report``; returns the results."""
    results = map_shards(fn, tasks, context.executor)
    for result in results:
        report.add(result)
    return results


def summed_counters(results: Sequence[ShardResult]) -> Counter[str]:
    """The named counters of all results, summed."""
    total: Counter[str] = Counter()
    for result in results:
        total.update(result.counters)
    return total


def read_exclusions(output: str, reason: str | None = None, limit: int | None = None) -> pa.Table:
    """The dropped documents of the stage whose output is ``output`` (optionally of one ``reason``)."""
    directory = excluded_path(output)
    fs, root = filesystem(directory)
    if not fs.isdir(root):
        raise StageError(f"{directory}: no exclusion dataset (has the stage run since it records drops?)")
    tables, rows = [], 0
    for path in list_shards(directory):
        table = read_shard(path)
        if reason is not None:
            table = table.filter(pa.compute.equal(table["reason"], reason))
        tables.append(table)
        rows += table.num_rows
        if limit is not None and rows >= limit:
            break
    table = pa.concat_tables(tables) if tables else EXCLUSION_SCHEMA.empty_table()
    return table.slice(0, limit) if limit is not None else table
