"""Where a registered model came from: code, params, the DVC outs it was built from and upstream runs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from components.report import metric_key
from components.tracking import TAG_OUT_MD5, TAG_STAGE, git_state

if TYPE_CHECKING:  # a type only: mlflow takes seconds to import
    from mlflow import MlflowClient

#: Only these outs of dvc.lock are lineage (not reports/ metrics files).
LINEAGE_PREFIXES = ("data/", "models/")


def _lock_stages(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        return {}
    return (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("stages", {})


def params_hash(lock_path: str | Path = "dvc.lock") -> str:
    """sha256 of the params ``dvc.lock`` records for every stage (canonical JSON): equal hashes mean the
    model was built with the same configuration."""
    recorded = {stage: entry.get("params", {}) for stage, entry in sorted(_lock_stages(lock_path).items())}
    return hashlib.sha256(json.dumps(recorded, sort_keys=True).encode("utf-8")).hexdigest()


def read_lock(path: str | Path = "dvc.lock") -> dict[str, list[tuple[str, str]]]:
    """Stage -> ``[(out path, md5)]`` of the data/ and models/ outs recorded in ``dvc.lock`` ({} if none)."""
    lock: dict[str, list[tuple[str, str]]] = {}
    for stage, entry in sorted(_lock_stages(path).items()):
        outs = [
            (out["path"], out["md5"])
            for out in entry.get("outs", [])
            if out.get("md5") and str(out["path"]).startswith(LINEAGE_PREFIXES)
        ]
        if outs:
            lock[stage] = outs
    return lock


def _latest_run(client: MlflowClient, experiment_id: str, filters: list[str]) -> str | None:
    runs = client.search_runs(
        [experiment_id],
        filter_string=" and ".join(filters),
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def upstream_run_ids(
    client: MlflowClient,
    experiment_id: str,
    parent_run_id: str | None,
    lock: dict[str, list[tuple[str, str]]],
) -> dict[str, str]:
    """Stage -> MLflow run id of the upstream stage runs that produced what ``dvc.lock`` records.

    A stage run matches when its ``dvc.md5.<out>`` tag equals the md5 in ``dvc.lock`` (the exact outputs,
    even from an earlier pipeline run served by DVC's cache); else the latest run of that stage under the
    same parent run.
    """
    found = {}
    for stage, outs in lock.items():
        stage_filter = f"tags.`{TAG_STAGE}` = '{stage}'"
        out_path, md5 = outs[0]
        run_id = _latest_run(
            client, experiment_id, [stage_filter, f"tags.`{TAG_OUT_MD5}.{out_path}` = '{md5}'"]
        )
        if run_id is None and parent_run_id:
            run_id = _latest_run(
                client, experiment_id, [stage_filter, f"tags.mlflow.parentRunId = '{parent_run_id}'"]
            )
        if run_id:
            found[stage] = run_id
    return found


def lineage_tags(client: MlflowClient, run: Any, lock_path: str | Path = "dvc.lock") -> dict[str, str]:
    """Version tags tracing a model back: git state, params hash, dvc.lock md5s and upstream run ids."""
    lock = read_lock(lock_path)
    tags = {f"lineage.{key}": value for key, value in git_state().items()}
    tags["lineage.params.sha256"] = params_hash(lock_path)
    for outs in lock.values():
        tags.update({metric_key(f"lineage.dvc.{path}"): md5 for path, md5 in outs})
    parent = run.data.tags.get("mlflow.parentRunId")
    upstream = upstream_run_ids(client, run.info.experiment_id, parent, lock)
    tags.update({metric_key(f"lineage.run.{stage}"): run_id for stage, run_id in upstream.items()})
    return tags
