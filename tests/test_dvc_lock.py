"""The committed dvc.lock matches the committed code: in a fresh clone, ``dvc status`` lists no changed
code or parameter dependency (outputs are absent there: they live in the DVC cache and remote)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import PROJECT_ROOT, make_dvc_project, run_checked

pytestmark = pytest.mark.skipif(
    not (PROJECT_ROOT / "dvc.lock").exists(), reason="no dvc.lock committed yet (run the pipeline, commit it)"
)
#: Dependencies a stage produces (absent in a fresh clone, which is not staleness).
PRODUCED = ("data/", "models/", "reports/")


def changed_inputs(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per stage, the changed dependencies of ``dvc status --json`` that are code or params."""
    found: dict[str, dict[str, Any]] = {}
    for stage, entries in status.items():
        for entry in entries:
            if isinstance(entry, dict):
                for path, state in (entry.get("changed deps") or {}).items():
                    if not path.startswith(PRODUCED):
                        found.setdefault(stage, {})[path] = state
    return found


def test_a_fresh_clone_sees_no_changed_code_or_params(tmp_path: Path) -> None:
    env = make_dvc_project(tmp_path)
    status = json.loads(run_checked([sys.executable, "-m", "dvc", "status", "--json"], tmp_path, env))
    stale = changed_inputs(status)
    assert not stale, f"dvc.lock is stale against the code: {stale}; rerun the pipeline and commit dvc.lock"
    locked = set(yaml.safe_load((tmp_path / "dvc.lock").read_text())["stages"])
    defined = set(yaml.safe_load((tmp_path / "dvc.yaml").read_text())["stages"])
    assert defined - locked <= {"register"}, f"stages missing from dvc.lock: {defined - locked}"
