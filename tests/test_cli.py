"""The codemill command: profiles applied as DVC experiments, errors before any work."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from components.cli import main, profile_command
from components.params import ParamsError, load_params
from tests.conftest import PROJECT_ROOT


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    shutil.copy(PROJECT_ROOT / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "infra/profiles").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_profile_becomes_one_set_param_per_leaf(project: Path) -> None:
    overlay = {
        "dedup": {"level": "repo", "threshold": 0.8},
        "ingest": {"languages": ["python", "c"]},
        "pretrain": {"min_lr": 2e-5},  # json.dumps writes 2e-05, a string to YAML 1.1
    }
    (project / "infra/profiles/big.yaml").write_text(yaml.safe_dump(overlay))
    command = profile_command("big")
    assert command[:5] == ["dvc", "exp", "run", "--name", "profile-big"]
    assert command[5:] == [
        "--set-param",
        "dedup.level=repo",
        "--set-param",
        "dedup.threshold=0.8",
        "--set-param",
        "ingest.languages=[python, c]",
        "--set-param",
        "pretrain.min_lr=2.0e-05",
    ]
    # what DVC writes back (the values parse as YAML) is what the overlay meant
    applied = {arg.split("=", 1)[0]: yaml.safe_load(arg.split("=", 1)[1]) for arg in command[6::2]}
    assert applied == {
        "dedup.level": "repo",
        "dedup.threshold": 0.8,
        "ingest.languages": ["python", "c"],
        "pretrain.min_lr": 2e-5,
    }


def test_bad_profile_fails_naming_file_and_key(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (project / "infra/profiles/bad.yaml").write_text("dedup:\n  threshold: 3\n")
    with pytest.raises(ParamsError, match=r"bad\.yaml: dedup\.threshold"):
        profile_command("bad")
    assert main(["run", "--profile", "bad", "--dry-run"]) == 2
    assert "dedup.threshold" in capsys.readouterr().err
    assert main(["run", "--profile", "missing", "--dry-run"]) == 2


def test_dry_run_prints_the_command(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (project / "infra/profiles/exact.yaml").write_text("dedup:\n  level: exact\n")
    assert main(["run", "--profile", "exact", "--dry-run"]) == 0
    expected = "dvc exp run --name profile-exact --set-param dedup.level=exact"
    assert capsys.readouterr().out.strip() == expected


def test_shipped_profiles_are_valid() -> None:
    for overlay in sorted((PROJECT_ROOT / "infra/profiles").glob("*.yaml")):
        load_params(PROJECT_ROOT / "params.yaml", overlays=[overlay])
