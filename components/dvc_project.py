"""The pipeline DAG as DVC sees it (stages, what each needs and writes), and the DVC commands that run it.

DVC's own index resolves everything ``dvc.yaml`` can express (templating such as
``models/${register.candidate}``, ``foreach``/``matrix`` stages, several ``dvc.yaml`` files), so stages
added later are picked up without any change here. :func:`stage_names` and :func:`producer_of` read
the top ``dvc.yaml`` as plain YAML (no DVC import), for the summary and for error messages.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DVC_FILE = "dvc.yaml"


def _stages_yaml(dvc_file: str | Path = DVC_FILE) -> dict[str, Any]:
    path = Path(dvc_file)
    if not path.is_file():
        return {}
    return (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("stages") or {}


def stage_names(dvc_file: str | Path = DVC_FILE) -> list[str]:
    """Stage names in the order ``dvc.yaml`` defines them (a topological order of the DAG)."""
    return list(_stages_yaml(dvc_file))


def producer_of(path: str, dvc_file: str | Path = DVC_FILE) -> str | None:
    """The stage of ``dvc.yaml`` whose outputs (or metrics) include ``path``, if any."""
    wanted = path.rstrip("/")
    for name, stage in _stages_yaml(dvc_file).items():
        for key in ("outs", "metrics"):
            for entry in stage.get(key) or []:
                declared = next(iter(entry)) if isinstance(entry, dict) else entry
                if str(declared).rstrip("/") == wanted:
                    return name
    return None


def declared_outs(stage: str, dvc_file: str | Path = DVC_FILE) -> list[str]:
    """The ``outs`` paths ``dvc.yaml`` declares for ``stage``; a ValueError names unknown stages."""
    stages = _stages_yaml(dvc_file)
    if stage not in stages:
        raise ValueError(f"{dvc_file}: no stage {stage!r}; stages: {', '.join(stages)}")
    return [str(next(iter(e)) if isinstance(e, dict) else e) for e in stages[stage].get("outs") or []]


@dataclass(frozen=True)
class DvcStage:
    """One command stage: its DVC address, the stages it needs, and where DVC records its state."""

    name: str  # as in its dvc.lock
    address: str  # what `dvc repro` takes: ``name`` or ``sub/dvc.yaml:name``
    upstream: tuple[str, ...]  # addresses of the command stages it depends on (directly)
    outs: tuple[str, ...]  # data outputs (paths relative to the dvc.yaml's directory)
    metrics: tuple[str, ...]  # metrics files (paths relative to the project root)
    lock_file: str  # its dvc.lock, relative to the project root


def read_dag(root: str | Path = ".") -> list[DvcStage]:
    """The command stages of the DVC project at ``root`` in a topological order (dependencies first)."""
    import networkx as nx
    from dvc.repo import Repo

    root = Path(root).resolve()
    with Repo(str(root)) as repo:
        graph = repo.index.graph  # edges point from a stage to the stages it depends on
        commands = {stage for stage in graph.nodes if getattr(stage, "cmd", None)}
        order = [stage for stage in reversed(list(nx.topological_sort(graph))) if stage in commands]
        stages = []
        for stage in order:
            upstream = _command_dependencies(graph, stage, commands)
            dvcfile = _dvcfile(stage, root)
            outs = [out for out in stage.outs if not (out.metric or out.plot)]
            stages.append(
                DvcStage(
                    name=stage.name,
                    address=_address(stage, root),
                    upstream=tuple(sorted(_address(s, root) for s in upstream)),
                    outs=tuple(str(out.def_path) for out in outs),
                    metrics=tuple(
                        str(Path(out.fs_path).resolve().relative_to(root)) for out in stage.outs if out.metric
                    ),
                    lock_file=str(dvcfile.with_name("dvc.lock")),
                )
            )
    return stages


def _dvcfile(stage: Any, root: Path) -> Path:
    return Path(stage.dvcfile.path).resolve().relative_to(root)


def _address(stage: Any, root: Path) -> str:
    """What ``dvc repro`` run in ``root`` takes: ``name``, or ``sub/dvc.yaml:name`` outside the top file."""
    dvcfile = _dvcfile(stage, root)
    return stage.name if str(dvcfile) == "dvc.yaml" else f"{dvcfile}:{stage.name}"


def _command_dependencies(graph: Any, stage: Any, commands: set[Any]) -> set[Any]:
    """The nearest command stages ``stage`` depends on, looking through stages without a command."""
    found, pending, seen = set(), list(graph.successors(stage)), set()
    while pending:
        node = pending.pop()
        if node in seen:
            continue
        seen.add(node)
        if node in commands:
            found.add(node)
        else:
            pending.extend(graph.successors(node))
    return found


def select(stages: list[DvcStage], targets: list[str] | None, single_item: bool = False) -> list[DvcStage]:
    """``targets`` and everything they depend on, in DAG order (like ``dvc repro TARGET...``), or only the
    targets with ``single_item`` (like ``dvc repro --single-item``); every stage if no targets."""
    if not targets:
        return stages
    by_address = {stage.address: stage for stage in stages}
    unknown = [target for target in targets if target not in by_address]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; dvc.yaml defines {sorted(by_address)}")
    wanted: set[str] = set(targets) if single_item else set()
    pending = [] if single_item else list(targets)
    while pending:
        address = pending.pop()
        if address not in wanted:
            wanted.add(address)
            pending.extend(by_address[address].upstream)
    return [stage for stage in stages if stage.address in wanted]


def locked_outs(root: str | Path, stage: DvcStage) -> dict[str, str]:
    """The md5 ``dvc.lock`` records for each data output of ``stage`` (``{}`` if it has no entry).

    Another stage process may be rewriting the lock file right now: a half-written file is read again.
    """
    path = Path(root) / stage.lock_file
    for attempt in range(10):
        try:
            lock = yaml.safe_load(path.read_text(encoding="utf-8")) if path.exists() else {}
            entry = (lock or {}).get("stages", {}).get(stage.name, {})
            recorded = {out["path"]: out.get("md5") for out in entry.get("outs", [])}
            return {path: recorded[path] for path in stage.outs if recorded.get(path)}
        except (yaml.YAMLError, AttributeError, KeyError, TypeError):
            time.sleep(0.1 * (attempt + 1))
    return {}


def stage_command(stage: DvcStage, force: bool = False) -> list[str]:
    """The DVC command that runs one stage alone (its dependencies are the flow's business)."""
    force_flag = ["--force"] if force else []
    return ["dvc", "--wait-for-lock", "repro", "--single-item", *force_flag, stage.address]


def experiment_command(
    overrides: dict[str, str],
    name: str | None = None,
    targets: list[str] | None = None,
    force: bool = False,
    single_item: bool = False,
) -> list[str]:
    """``dvc exp run [--name NAME] --set-param KEY=VALUE... [--force] [--single-item] [TARGETS]``.

    Values are passed as written: DVC parses them as YAML, as ``params.yaml`` would.
    """
    command = ["dvc", "exp", "run", *(["--name", name] if name else [])]
    for key, value in overrides.items():
        command += ["--set-param", f"{key}={value}"]
    flags = (["--force"] if force else []) + (["--single-item"] if single_item else [])
    return [*command, *flags, *(targets or [])]


def planned_commands(
    root: str | Path = ".",
    targets: list[str] | None = None,
    overrides: dict[str, str] | None = None,
    experiment: str | None = None,
    force: bool = False,
    single_item: bool = False,
) -> list[list[str]]:
    """The DVC commands the flow would run, in order (``codemill run --dry-run`` prints them)."""
    if overrides or experiment:
        return [experiment_command(overrides or {}, experiment, targets, force, single_item)]
    return [stage_command(stage, force) for stage in select(read_dag(root), targets, single_item)]
