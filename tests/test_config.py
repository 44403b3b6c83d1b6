"""Parameters: one validated source of truth; bad keys, types and values fail naming the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from components.params import ParamsError, deep_merge, flatten, load_params
from tests.conftest import PROJECT_ROOT


def _write_params(tmp_path: Path, mutate) -> Path:
    raw = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    mutate(raw)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_default_params_load() -> None:
    params = load_params(PROJECT_ROOT / "params.yaml")
    assert params.dedup.level in {"none", "exact", "file", "repo"}
    assert params.ingest.sources[0].kind == "python-stdlib"


@pytest.mark.parametrize(
    ("mutate", "key"),
    [
        (lambda raw: raw.update(bogus={"x": 1}), "bogus"),
        (lambda raw: raw["dedup"].update(shingle_size=5), "dedup.shingle_size"),
        (lambda raw: raw["dedup"].update(num_perm="256"), "dedup.num_perm"),
        (lambda raw: raw["dedup"].update(threshold=1.5), "dedup.threshold"),
        (lambda raw: raw["dedup"].update(level="fuzzy"), "dedup.level"),
        (lambda raw: raw["ingest"].update(max_file_bytes=-1), "ingest.max_file_bytes"),
        (lambda raw: raw["ingest"]["sources"][0].update(kind="ftp"), "ingest.sources.0"),
        (lambda raw: raw["executor"].update(workers=0), "executor.workers"),
        # Checked at load time, not after hours of work:
        (lambda raw: raw["executor"].update(address="localhost:8786"), "executor.address"),  # no scheme
        (lambda raw: raw["model"].update(name="team/tiny"), "model.name"),  # the registry refuses "/"
        (lambda raw: raw["model"].update(name="tiny:v2"), "model.name"),
        (
            lambda raw: raw["evaluate"]["benchmarks"].append(
                {"name": "x", "file": "eval_sets/missing.jsonl"}
            ),
            "evaluate.benchmarks[3].file",
        ),
        (
            lambda raw: raw["evaluate"]["benchmarks"].append({"name": "x", "file": "../elsewhere.jsonl"}),
            "evaluate.benchmarks[3].file",
        ),
    ],
)
def test_bad_params_fail_naming_file_and_key(tmp_path: Path, mutate, key: str) -> None:
    path = _write_params(tmp_path, mutate)
    with pytest.raises(ParamsError) as excinfo:
        load_params(path)
    message = str(excinfo.value)
    assert str(path) in message
    assert f": {key}" in message


def test_invalid_yaml_names_file(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("dedup: [unclosed\n")
    with pytest.raises(ParamsError, match=r"params\.yaml: invalid YAML"):
        load_params(path)


def test_missing_file_names_file(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match=r"nope\.yaml: cannot read"):
        load_params(tmp_path / "nope.yaml")


def test_overlay_merges_nested_keys_and_is_validated(tmp_path: Path) -> None:
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("dedup:\n  level: repo\n")
    params = load_params(PROJECT_ROOT / "params.yaml", overlays=[overlay])
    assert params.dedup.level == "repo"
    assert params.dedup.num_perm == load_params(PROJECT_ROOT / "params.yaml").dedup.num_perm
    overlay.write_text("dedup:\n  threshold: 2\n")
    with pytest.raises(ParamsError, match=r"overlay\.yaml: dedup\.threshold"):
        load_params(PROJECT_ROOT / "params.yaml", overlays=[overlay])


def test_overrides_use_dotted_keys() -> None:
    params = load_params(PROJECT_ROOT / "params.yaml", overrides={"dedup.level": "exact"})
    assert params.dedup.level == "exact"


def test_deep_merge_and_flatten() -> None:
    merged = deep_merge({"a": {"b": 1, "c": 2}, "d": [1]}, {"a": {"b": 3}, "d": [2]})
    assert merged == {"a": {"b": 3, "c": 2}, "d": [2]}
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": {}}) == {"a.b": 1, "a.c.d": 2, "e": {}}


def test_cli_reports_bad_params_before_any_work(tmp_path: Path) -> None:
    path = _write_params(tmp_path, lambda raw: raw["dedup"].update(threshold=-0.1))
    result = subprocess.run(
        [sys.executable, "-m", "components.cli", "--params", str(path), "params"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "dedup.threshold" in result.stderr
