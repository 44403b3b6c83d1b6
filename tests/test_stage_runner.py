"""The stage runner: named inputs checked once, the exclusion dataset beside the output, inspect."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pytest

from components import curate, tokenize
from components.cli import main
from components.errors import StageError
from components.shards import BASE_SCHEMA, make_document, write_shard
from components.stage_runner import EXCLUSION_SCHEMA, call_stage, excluded_path, read_exclusions
from tests.conftest import PROJECT_ROOT, make_params

GOOD = "\n".join(f"def f{i}(x):\n    return x + {i}\n" for i in range(8))
LONG_LINE = "x = '" + "a" * 2000 + "'\n" + GOOD


def test_a_missing_input_names_the_input_and_the_stage_that_makes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copy(PROJECT_ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StageError) as missing:
        call_stage(curate.STAGE, make_params(), ["data/ingest"], "data/curate")
    message = str(missing.value)
    assert "curate: input 'documents': data/ingest does not exist" in message
    assert "made by stage 'ingest' (run `dvc repro ingest`)" in message
    (tmp_path / "data" / "clean").mkdir(parents=True)
    with pytest.raises(StageError, match=r"data/clean holds no part-\*\.parquet shards; .* stage 'clean'"):
        call_stage(tokenize.STAGE, make_params(), ["data/clean"], "data/tokenize")
    with pytest.raises(StageError, match=r"expected 1 --input \(documents \(shards\)\), got 2"):
        call_stage(curate.STAGE, make_params(), ["a", "b"], "out")
    assert not (tmp_path / "data" / "curate").exists()


def test_dropped_documents_go_to_the_exclusion_dataset_and_inspect_prints_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [
        make_document("r", "good.py", "python", GOOD),
        make_document("r", "long.py", "python", LONG_LINE),
        make_document("r", "tiny.py", "python", "x = 1\n"),
    ]
    monkeypatch.chdir(tmp_path)
    source = tmp_path / "data" / "ingest"
    source.mkdir(parents=True)
    write_shard(pa.Table.from_pylist(rows, schema=BASE_SCHEMA), str(source / "part-00000.parquet"))
    report = call_stage(curate.STAGE, make_params(executor={"workers": 1}), [str(source)], "data/curate")

    assert report.drops["max_line_length"] == 1 and report.drops["min_lines"] == 1
    assert "dropped" not in report.details  # reports hold counts only
    excluded = read_exclusions(str(tmp_path / "data" / "curate"))
    assert excluded.schema == EXCLUSION_SCHEMA
    by_path = {row["path"]: row for row in excluded.to_pylist()}
    assert set(by_path) == {"long.py", "tiny.py"}
    assert by_path["long.py"]["reason"] == "max_line_length" and by_path["long.py"]["content"] == LONG_LINE
    assert by_path["long.py"]["detail"] == "max_line_length=2006 (threshold 1000, lang=python)"
    assert read_exclusions(str(tmp_path / "data" / "curate"), "min_lines").column("path").to_pylist() == [
        "tiny.py"
    ]
    assert Path(excluded_path(str(tmp_path / "data" / "curate"))).is_dir()

    shutil.copy(PROJECT_ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    assert main(["inspect", "curate", "--reason", "max_line_length", "-n", "1"]) == 0
    shown = capsys.readouterr().out
    assert shown.startswith("== r/long.py  [max_line_length] max_line_length=2006") and "aaaa" in shown
    assert "tiny.py" not in shown
    assert main(["inspect", "curate", "--reason", "no_such_reason"]) == 0
    assert "no dropped documents for reason 'no_such_reason'" in capsys.readouterr().out
    assert main(["inspect", "nonesuch"]) == 2
    assert "no stage 'nonesuch'" in capsys.readouterr().err
