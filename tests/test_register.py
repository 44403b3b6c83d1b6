"""Register stage, fast parts: eval report reading, gates, lineage, and moving champion (sqlite registry)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from components.cli import main as cli_main
from components.params import flatten
from components.params.register import RegisterConfig, metric_key
from components.register import registry as reg
from components.register.lineage import params_hash, read_lock
from components.register.publish import pip_requirements, read_eval_metrics
from components.report import write_eval_report
from tests.conftest import PROJECT_ROOT

NAME = "codemill-unit"


def test_read_eval_metrics_takes_the_source_stage_and_numbers_only(tmp_path: Path) -> None:
    path = tmp_path / "eval.json"
    models = {"sft": {"pass@1": 0.25, "bpb": 1.5, "n": 164, "ok": True, "note": "x"}, "anneal": {}}
    write_eval_report(path, models, {})
    assert "pass@1" not in path.read_text(), "one spelling: the MLflow key"
    assert read_eval_metrics(path, "sft") == {"bpb": 1.5, "n": 164.0, "pass_at_1": 0.25}
    assert read_eval_metrics(path, "anneal") == {}
    assert read_eval_metrics(tmp_path / "absent.json", "sft") == {}


def test_gates_absolute_bounds_and_missing_metrics_fail_closed() -> None:
    config = RegisterConfig(min_scores={"pass_at_1": 0.1}, max_scores={"bpb": 2.0}, compare={})
    results = {r.name: r.passed for r in reg.check_gates(config, {"pass_at_1": 0.1, "bpb": 2.5}, {})}
    assert results == {"min:pass_at_1": True, "max:bpb": False}
    assert not any(r.passed for r in reg.check_gates(config, {}, {}))  # no eval report: closed
    assert reg.check_gates(RegisterConfig(min_scores={}, compare={}), {}, {}) == []


def test_gates_against_champion_use_direction_and_tolerance() -> None:
    config = RegisterConfig(min_scores={}, compare={"pass_at_1": "max", "bpb": "min"}, tolerance=0.01)
    champion = {"pass_at_1": 0.20, "bpb": 1.00}
    ok = reg.check_gates(config, {"pass_at_1": 0.195, "bpb": 1.005}, champion)
    assert [(r.name, r.passed) for r in ok] == [("vs_champion:bpb", True), ("vs_champion:pass_at_1", True)]
    worse = {r.name: r.passed for r in reg.check_gates(config, {"pass_at_1": 0.15, "bpb": 1.2}, champion)}
    assert worse == {"vs_champion:bpb": False, "vs_champion:pass_at_1": False}
    # a metric the champion never had is not compared; one the candidate lacks fails
    only_bpb = reg.check_gates(config, {"pass_at_1": 0.5}, {"bpb": 1.0})
    assert [(r.name, r.passed) for r in only_bpb] == [("vs_champion:bpb", False)]


def test_config_is_strict() -> None:
    with pytest.raises(ValidationError):
        RegisterConfig(min_scores={"pass_at_1": "high"})
    with pytest.raises(ValidationError, match="must be written 'pass_at_1'"):
        RegisterConfig(min_scores={"pass@1": 0.1})
    with pytest.raises(ValidationError):
        RegisterConfig(compare={"pass_at_1": "up"})
    with pytest.raises(ValidationError):
        RegisterConfig(unknown=1)
    assert RegisterConfig().candidate == "align" and RegisterConfig().promotion.auto is False


def test_tag_and_param_keys_are_valid_mlflow_keys() -> None:
    from mlflow.utils.validation import _validate_param_name

    for key in flatten({"register": RegisterConfig().model_dump(mode="json")}):
        _validate_param_name(key)  # what tracking.stage_run logs
    assert reg.metric_tag("pass@1") == "eval.pass_at_1"
    assert metric_key("lineage.dvc.models/sft") == "lineage.dvc.models/sft"


def test_pip_requirements_are_pinned_without_local_labels() -> None:
    reqs = dict(req.split("==") for req in pip_requirements())
    assert set(reqs) == {"mlflow", "torch", "transformers", "tokenizers", "accelerate"}
    assert all(version and "+" not in version for version in reqs.values())


def test_lineage_reads_data_and_model_outs_from_dvc_lock(tmp_path: Path) -> None:
    lock = {
        "schema": "2.0",
        "stages": {
            "clean": {
                "outs": [{"path": "data/clean", "md5": "aa.dir"}, {"path": "reports/x.json", "md5": "b"}]
            },
            "anneal": {"outs": [{"path": "models/anneal", "md5": "cc.dir"}]},
            "validate": {"outs": [{"path": "reports/data_docs", "md5": "dd.dir"}]},
        },
    }
    (tmp_path / "dvc.lock").write_text(json.dumps(lock))  # JSON is YAML
    assert read_lock(tmp_path / "dvc.lock") == {
        "anneal": [("models/anneal", "cc.dir")],
        "clean": [("data/clean", "aa.dir")],
    }
    assert read_lock(tmp_path / "missing.lock") == {}
    lock["stages"]["anneal"]["params"] = {"params.yaml": {"anneal.steps": 60}}
    (tmp_path / "dvc.lock").write_text(json.dumps(lock))
    first = params_hash(tmp_path / "dvc.lock")
    assert first == params_hash(tmp_path / "dvc.lock")
    lock["stages"]["anneal"]["params"]["params.yaml"]["anneal.steps"] = 61
    (tmp_path / "dvc.lock").write_text(json.dumps(lock))
    assert params_hash(tmp_path / "dvc.lock") != first


@pytest.fixture
def versions(mlflow_uri: str) -> list[str]:
    """Three registered versions (no weights needed to move aliases); version 3 failed its gates."""
    import mlflow

    client = mlflow.MlflowClient()
    client.create_registered_model(NAME)
    made = [str(client.create_model_version(NAME, source=f"file:///nowhere/{i}").version) for i in range(3)]
    client.set_model_version_tag(NAME, made[2], reg.TAG_GATES_PASSED, "false")
    client.set_model_version_tag(NAME, made[2], reg.TAG_GATES_FAILED, "min:pass_at_1")
    return made


def test_promote_and_rollback_walk_the_champion_history(versions: list[str]) -> None:
    import mlflow

    client = mlflow.MlflowClient()
    v1, v2, v3 = versions
    assert reg.promote(NAME, v1, "first", "alice") is None
    assert reg.promote(NAME, v2, "better pass@1", "bob") == v1
    tags = client.get_model_version(NAME, v2).tags
    assert (tags[reg.TAG_BY], tags[reg.TAG_REASON], tags[reg.TAG_PREVIOUS]) == ("bob", "better pass@1", v1)
    assert tags[reg.TAG_ACTION] == "promote"

    with pytest.raises(reg.RegistryError, match="failed its gates"):
        reg.promote(NAME, v3, "try", "carol")
    assert str(reg.alias_version(NAME, reg.CHAMPION).version) == v2
    assert reg.promote(NAME, v3, "forced", "carol", force=True) == v2

    assert reg.rollback(NAME, "v3 broke prod", "dave") == (v3, v2)
    assert reg.rollback(NAME, "v2 too", "dave") == (v2, v1)  # walks back via champion.previous
    assert str(reg.alias_version(NAME, reg.CHAMPION).version) == v1
    restored = client.get_model_version(NAME, v1).tags
    assert (restored[reg.TAG_ACTION], restored[reg.TAG_BY], restored[reg.TAG_REPLACED]) == (
        "rollback",
        "dave",
        v2,
    )
    abandoned = client.get_model_version(NAME, v3).tags
    assert (abandoned[reg.TAG_ROLLED_BACK_BY], abandoned[reg.TAG_ROLLED_BACK_REASON]) == (
        "dave",
        "v3 broke prod",
    )
    with pytest.raises(reg.RegistryError, match="replaced no earlier champion"):
        reg.rollback(NAME, "nothing before v1", "dave")


def test_promote_and_rollback_commands(versions: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    params = str(PROJECT_ROOT / "params.yaml")
    common = ["--params", params, "--model", "unit", "--user", "erin"]
    assert cli_main(["rollback", *common, "--reason", "no champion yet"]) == 2
    assert "has no champion" in capsys.readouterr().err
    assert cli_main(["promote", *common, versions[0], "--reason", "go"]) == 0
    assert cli_main(["promote", *common, versions[1], "--reason", "go again"]) == 0
    assert "champion 1 -> 2 (by erin: go again)" in capsys.readouterr().out
    assert cli_main(["promote", *common, versions[2], "--reason", "bad"]) == 2
    assert cli_main(["rollback", *common, "--reason", "regression"]) == 0
    assert str(reg.alias_version(NAME, reg.CHAMPION).version) == versions[0]
    assert cli_main(["promote", *common, "99", "--reason", "no such"]) == 2
