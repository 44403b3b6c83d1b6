"""The ingest stage on real corpora written by the tests: local trees, tables, datasets, the stdlib."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from components.errors import StageError
from components.ingest import STAGE
from components.ingest.sources import site_packages_files
from components.params import ParamsError, parse_params
from components.params.ingest import SourceConfig
from components.report import StageReport
from components.shards import content_sha256, document_id, list_shards, read_shard
from components.stage_runner import call_stage
from tests.conftest import PROJECT_ROOT, make_params, write_files

GOOD = "def f():\n    return 1\n"


def ingest(output: Path, sources: list[dict[str, Any]], workers: int = 1, **ingest: Any) -> StageReport:
    """Run the stage on ``sources`` (other ingest keys as given) into ``output``."""
    params = make_params(ingest={"sources": sources, **ingest}, executor={"workers": workers})
    return call_stage(STAGE, params, [], str(output))


def documents(output: Path) -> list[dict[str, Any]]:
    """All rows of the output shards, in shard order."""
    return [row for path in list_shards(str(output)) for row in read_shard(path).to_pylist()]


def shard_bytes(output: Path) -> dict[str, bytes]:
    return {Path(path).name: Path(path).read_bytes() for path in list_shards(str(output))}


def test_local_directories_become_one_repo_per_subdirectory(tmp_path: Path) -> None:
    corpus = write_files(
        tmp_path / "corpus",
        {
            "alpha/main.py": GOOD,
            "alpha/pkg/util.py": "X = 1\n",
            "alpha/README.md": "# Alpha\n",
            "alpha/__pycache__/main.cpython-311.pyc": b"\x00compiled",
            "beta/lib.rs": "fn main() {}\n",
            "beta/notes.txt": "notes\n",
            "beta/blob.weird": "?\n",
            "beta/run.py": "print('beta')\n",
            "loose.py": "print('loose')\n",
        },
    )
    report = ingest(
        tmp_path / "out", [{"kind": "local", "paths": [str(corpus)]}], languages=["python", "markdown"]
    )

    rows = documents(tmp_path / "out")
    assert [(row["repo"], row["path"], row["lang"]) for row in rows] == [
        ("alpha", "README.md", "markdown"),
        ("alpha", "main.py", "python"),
        ("alpha", "pkg/util.py", "python"),
        ("beta", "run.py", "python"),
        ("corpus", "loose.py", "python"),
    ]
    main = rows[1]
    assert main["content"] == GOOD
    assert main["id"] == document_id("alpha", "main.py")
    assert main["sha256"] == content_sha256(GOOD)
    assert main["size_bytes"] == len(GOOD.encode())
    assert main["license"] is None and main["stars"] is None
    assert report.files_in == 8  # __pycache__ is not walked
    assert report.files_out == 5
    assert report.drops == {"language_not_selected": 2, "unknown_language": 1}
    assert report.bytes_out == sum(row["size_bytes"] for row in rows)
    assert {lang: n["files"] for lang, n in report.details["languages"].items()} == {
        "markdown": 1,
        "python": 4,
    }


def test_git_work_tree_is_one_repo(tmp_path: Path) -> None:
    tree = write_files(tmp_path / "mytool", {"src/app.py": GOOD, "setup.py": "import setuptools\n"})
    subprocess.run(["git", "init", "-q", str(tree)], check=True)

    ingest(tmp_path / "out", [{"kind": "local", "paths": [str(tree)], "name": "github"}])

    rows = documents(tmp_path / "out")
    assert [(row["repo"], row["path"]) for row in rows] == [
        ("github/mytool", "setup.py"),
        ("github/mytool", "src/app.py"),
    ]


def test_bad_files_are_skipped_by_reason_without_crashing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = write_files(
        tmp_path / "corpus" / "repo",
        {
            "good.py": GOOD,
            "binary.py": b"import os\x00\x01\x02",
            "latin1.py": "s = 'café'\n".encode("latin-1"),
            "empty.py": "",
            "blank.py": "  \n\n\t\n",
            "big.py": "x = 1\n" * 400,  # 2,400 bytes > max_file_bytes
            "sub/ok.py": "Y = 2\n",
        },
    )
    huge = repo / "huge.py"
    huge.touch()
    os.truncate(huge, 2 * 1024**3)  # sparse 2 GB: must be skipped from its size, never read
    (repo / "loop_a.py").symlink_to("loop_b.py")
    (repo / "loop_b.py").symlink_to("loop_a.py")
    (repo / "broken.py").symlink_to("missing.py")
    (repo / "linked.py").symlink_to("good.py")
    (repo / "sub" / "up").symlink_to("..")  # a directory link back to an ancestor: a loop
    (repo / "sub_again").symlink_to("sub")  # other directory links are not followed either
    (tmp_path / "other").mkdir()
    (repo / "elsewhere").symlink_to(tmp_path / "other")  # a link out of the source: never followed
    (tmp_path / "secret.py").write_text("PASSWORD = 'hunter2'\n")
    (repo / "secret.py").symlink_to(tmp_path / "secret.py")  # a file link out of the source: skipped
    (repo / os.fsdecode(b"caf\xe9.py")).write_text("X = 1\n")  # a Latin-1 file name: skipped
    monkeypatch.chdir(repo)
    server = socket.socket(socket.AF_UNIX)
    server.bind("socket.py")  # a directory entry that cannot be opened as a file, even by root
    try:
        start = time.perf_counter()
        report = ingest(
            tmp_path / "out", [{"kind": "local", "paths": [str(tmp_path / "corpus")]}], max_file_bytes=1000
        )
        elapsed = time.perf_counter() - start
    finally:
        server.close()

    rows = documents(tmp_path / "out")
    assert [row["path"] for row in rows] == ["good.py", "linked.py", "sub/ok.py"]
    assert rows[1]["content"] == GOOD
    assert report.drops == {
        "binary": 1,
        "not_utf8": 1,
        "empty": 2,
        "too_large": 2,
        "symlink_loop": 3,
        "symlink_dir": 1,
        "symlink_outside": 2,
        "bad_name": 1,
        "broken_symlink": 1,
        "unreadable": 1,
    }
    assert "hunter2" not in "".join(row["content"] for row in rows)
    assert report.files_in == 3 + sum(report.drops.values())
    # Only what was read counts as input: the two oversized files contribute nothing.
    read = [
        GOOD,
        GOOD,
        "Y = 2\n",
        "import os\x00\x01\x02",
        "s = 'café'\n".encode("latin-1"),
        "",
        "  \n\n\t\n",
    ]
    assert report.bytes_in == sum(len(x.encode() if isinstance(x, str) else x) for x in read)
    assert elapsed < 10


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files and directories whatever their mode")
def test_files_and_directories_without_read_permission_are_unreadable(tmp_path: Path) -> None:
    repo = write_files(
        tmp_path / "corpus" / "repo", {"good.py": GOOD, "secret.py": GOOD, "closed/x.py": GOOD}
    )
    (repo / "secret.py").chmod(0)
    (repo / "closed").chmod(0)
    try:
        report = ingest(tmp_path / "out", [{"kind": "local", "paths": [str(tmp_path / "corpus")]}])
    finally:
        (repo / "closed").chmod(0o755)
    assert [row["path"] for row in documents(tmp_path / "out")] == ["good.py"]
    assert report.drops == {"unreadable": 2}


def test_caps_keep_the_longest_sorted_prefix(tmp_path: Path) -> None:
    corpus = write_files(
        tmp_path / "corpus",
        {f"{repo}/{name}.py": f"v = '{repo}{name}'\n" for repo in ("b", "a") for name in ("y", "x")},
    )
    source = [{"kind": "local", "paths": [str(corpus)]}]
    size = len("v = 'ax'\n")

    report = ingest(tmp_path / "files", source, max_files=3)
    assert [(row["repo"], row["path"]) for row in documents(tmp_path / "files")] == [
        ("a", "x.py"),
        ("a", "y.py"),
        ("b", "x.py"),
    ]
    assert report.drops == {"cap_max_files": 1}

    report = ingest(tmp_path / "bytes", source, max_bytes=2 * size + 1)
    assert [(row["repo"], row["path"]) for row in documents(tmp_path / "bytes")] == [
        ("a", "x.py"),
        ("a", "y.py"),
    ]
    assert report.drops == {"cap_max_bytes": 2}
    assert report.bytes_out == 2 * size


def _write_stack_parquet(path: Path, rows: list[dict[str, Any]]) -> None:
    pq.write_table(pa.Table.from_pylist(rows), path)


STACK_ROWS = [
    {
        "content": GOOD,
        "max_stars_repo_name": "octo/hello",
        "max_stars_repo_path": "src/hello.py",
        "lang": "Python",
        "max_stars_count": 42.0,
        "max_stars_repo_licenses": ["MIT", "Apache-2.0"],
    },
    {
        "content": "console.log(1)\n",
        "max_stars_repo_name": "octo/web",
        "max_stars_repo_path": "app.js",
        "lang": "JavaScript",
        "max_stars_count": None,
        "max_stars_repo_licenses": [],
    },
    {
        "content": "x = '\x00'\n",
        "max_stars_repo_name": "octo/bin",
        "max_stars_repo_path": "bin.py",
        "lang": "Python",
        "max_stars_count": 1.0,
        "max_stars_repo_licenses": ["MIT"],
    },
    {
        "content": "y = 2\n",
        "max_stars_repo_name": None,
        "max_stars_repo_path": "orphan.py",
        "lang": "Python",
        "max_stars_count": None,
        "max_stars_repo_licenses": [],
    },
]


def test_files_source_reads_stack_parquet_and_codeparrot_jsonl(tmp_path: Path) -> None:
    _write_stack_parquet(tmp_path / "stack.parquet", STACK_ROWS)
    codeparrot = [
        {"repo_name": "parrot/one", "path": "a.py", "content": "A = 1\n", "license": "mit", "size": "6"},
        {"repo_name": "parrot/one", "path": "empty.py", "content": "", "license": "mit", "size": "0"},
    ]
    lines = [json.dumps(row) for row in codeparrot] + ["{not json", ""]
    (tmp_path / "parrot.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    sources = [{"kind": "files", "paths": [str(tmp_path / "stack.parquet"), str(tmp_path / "parrot.jsonl")]}]

    report = ingest(tmp_path / "out", sources, languages=["python"])

    rows = {row["path"]: row for row in documents(tmp_path / "out")}
    assert sorted(rows) == ["a.py", "src/hello.py"]
    hello = rows["src/hello.py"]
    assert (hello["repo"], hello["lang"], hello["stars"], hello["license"]) == (
        "octo/hello",
        "python",
        42,
        "MIT,Apache-2.0",
    )
    assert hello["id"] == document_id("octo/hello", "src/hello.py")
    parrot = rows["a.py"]
    assert (parrot["repo"], parrot["lang"], parrot["stars"], parrot["license"]) == (
        "parrot/one",
        "python",
        None,
        "mit",
    )
    assert report.files_in == 7
    assert report.drops == {
        "language_not_selected": 1,
        "binary": 1,
        "missing_metadata": 1,
        "empty": 1,
        "bad_record": 1,
    }


def test_files_source_column_mapping_from_params(tmp_path: Path) -> None:
    rows = [{"code": GOOD, "project": "me/tool", "file": "tool.py", "repo": "ignored"}]
    (tmp_path / "mine.jsonl").write_text("\n".join(json.dumps(row) for row in rows), encoding="utf-8")
    columns = {"content": "code", "repo": "project", "path": "file"}
    source = {"kind": "files", "paths": [str(tmp_path / "*.jsonl")], "columns": columns, "name": "mine"}

    ingest(tmp_path / "out", [source])
    (row,) = documents(tmp_path / "out")
    assert (row["repo"], row["path"], row["content"]) == ("mine/me/tool", "tool.py", GOOD)

    with pytest.raises(StageError, match=r"column 'stars_total' \(columns.stars\) not found"):
        ingest(tmp_path / "bad", [{**source, "columns": {**columns, "stars": "stars_total"}}])
    with pytest.raises(
        StageError, match=r"mine.jsonl: no 'path' column \(tried \['path', 'max_stars_repo_path'"
    ):
        ingest(tmp_path / "bad", [{**source, "columns": {}}])


def test_files_source_reads_saved_dataset(tmp_path: Path) -> None:
    import datasets

    datasets.Dataset.from_dict(
        {
            "content": [GOOD, "B = 2\n"],
            "repo_name": ["ds/one", "ds/two"],
            "path": ["one.py", "two.py"],
            "license": ["apache-2.0", None],
            "stars": [3, None],
        }
    ).save_to_disk(str(tmp_path / "saved"))

    report = ingest(tmp_path / "out", [{"kind": "files", "paths": [str(tmp_path / "saved")]}])

    rows = documents(tmp_path / "out")
    assert [(row["repo"], row["path"], row["license"], row["stars"]) for row in rows] == [
        ("ds/one", "one.py", "apache-2.0", 3),
        ("ds/two", "two.py", None, None),
    ]
    assert report.files_in == 2 and report.drops == {}


def test_same_corpus_gives_identical_shards_whatever_the_workers(tmp_path: Path) -> None:
    """Runs of 200 bytes (many per task) merged in (repo, path) order, on 1 and 2 workers alike."""
    corpus = write_files(
        tmp_path / "corpus", {f"r{i % 3}/m{i}.py": f"value = {i}\n" * (i + 1) for i in range(12)}
    )
    for part in range(3):
        rows = [{**STACK_ROWS[0], "max_stars_repo_path": f"p{part}/{i}.py"} for i in range(4)]
        _write_stack_parquet(tmp_path / f"stack-{part}.parquet", rows)
    sources = [
        {"kind": "local", "paths": [str(corpus)]},
        {"kind": "files", "paths": [str(tmp_path / "stack-*.parquet")]},
    ]
    params = {"sources": sources}
    data = {"shard_bytes": 200}

    first = call_stage(
        STAGE, make_params(ingest=params, data=data, executor={"workers": 1}), [], str(tmp_path / "a")
    )
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    executor = {"workers": 2, "work_dir": str(scratch)}
    second = call_stage(
        STAGE, make_params(ingest=params, data=data, executor=executor), [], str(tmp_path / "b")
    )

    assert list(scratch.iterdir()) == [], "the sorted runs are removed"
    keys = [(row["repo"], row["path"]) for row in documents(tmp_path / "a")]
    assert keys == sorted(keys)
    assert len(shard_bytes(tmp_path / "a")) > 1
    assert shard_bytes(tmp_path / "a") == shard_bytes(tmp_path / "b")
    ids = [row["id"] for row in documents(tmp_path / "a")]
    assert len(ids) == len(set(ids)) == 24
    assert first.to_dict() | {"seconds": 0} == second.to_dict() | {"seconds": 0}


def test_merging_two_runs_at_a_time_gives_the_same_shards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many runs merged in several levels (fan-in 2) give the bytes of one merge of them all."""
    import components.ingest
    from components.ingest import runs

    corpus = write_files(
        tmp_path / "corpus", {f"r{i % 5}/m{i:02d}.py": f"value = {i}\n" * 9 for i in range(40)}
    )
    copies = write_files(
        tmp_path / "copies", {f"r{i % 5}/m{i:02d}.py": f"copy = {i}\n" * 9 for i in range(0, 40, 3)}
    )
    sources = [{"kind": "local", "paths": [str(corpus)]}, {"kind": "local", "paths": [str(copies)]}]
    params = make_params(ingest={"sources": sources}, data={"shard_bytes": 300}, executor={"workers": 1})
    call_stage(STAGE, params, [], str(tmp_path / "one-merge"))
    monkeypatch.setattr(runs, "MAX_FAN_IN", 2)
    monkeypatch.setattr(components.ingest, "MAX_FAN_IN", 2)
    report = call_stage(STAGE, params, [], str(tmp_path / "levels"))

    assert shard_bytes(tmp_path / "levels") == shard_bytes(tmp_path / "one-merge")
    assert report.drops == {"duplicate_path": 14}  # the second source's copies lose to the first's files
    assert [row["content"][:5] for row in documents(tmp_path / "levels")] == ["value"] * 40


def test_same_path_from_two_sources_is_kept_once(tmp_path: Path) -> None:
    corpus = write_files(tmp_path / "corpus", {"r/a.py": GOOD, "r/b.py": "B = 1\n"})
    source = {"kind": "local", "paths": [str(corpus)]}
    report = ingest(tmp_path / "out", [source, source])
    assert len(documents(tmp_path / "out")) == 2
    assert report.drops == {"duplicate_path": 2}
    assert [counts["files_out"] for counts in report.details["sources"]] == [2, 0]


def test_extensions_and_languages_from_params(tmp_path: Path) -> None:
    corpus = write_files(
        tmp_path / "corpus",
        {
            "r/SConstruct": "env = Environment()\n",
            "r/page.tpl": "{{ x }}\n",
            "r/a.py": GOOD,
            "r/b.rs": "fn x() {}\n",
        },
    )
    source = [{"kind": "local", "paths": [str(corpus)]}]
    extensions = {".tpl": "Jinja", "SConstruct": "python"}

    report = ingest(tmp_path / "out", source, extensions=extensions, languages=["python", "jinja"])
    assert [(row["path"], row["lang"]) for row in documents(tmp_path / "out")] == [
        ("SConstruct", "python"),
        ("a.py", "python"),
        ("page.tpl", "jinja"),
    ]
    assert report.drops == {"language_not_selected": 1}

    ingest(tmp_path / "all", source, languages=None)  # null: every known language
    assert [row["lang"] for row in documents(tmp_path / "all")] == ["python", "rust"]

    with pytest.raises(
        StageError,
        match=r"no document kept out of 4 files seen .*'language_not_selected': 2, 'unknown_language': 2",
    ):
        ingest(tmp_path / "none", source, languages=["cobol"])


def test_stdlib_source_names_one_repo_per_top_level_module(tmp_path: Path) -> None:
    report = ingest(tmp_path / "out", [{"kind": "python-stdlib"}], max_bytes=None, languages=["python"])

    rows = documents(tmp_path / "out")
    by_repo: dict[str, set[str]] = {}
    for row in rows:
        by_repo.setdefault(row["repo"], set()).add(row["path"])
    assert "asyncio/base_events.py" in by_repo["python-stdlib/asyncio"]
    assert by_repo["python-stdlib/os"] == {"os.py"}
    for repo, paths in by_repo.items():
        assert {path.split("/", 1)[0].removesuffix(".py") for path in paths} == {
            repo.removeprefix("python-stdlib/")
        }
    assert not any("site-packages" in row["path"] or "__pycache__" in row["path"] for row in rows)
    assert {row["lang"] for row in rows} == {"python"} and {row["license"] for row in rows} == {"PSF-2.0"}
    assert report.files_out > 500 and report.metrics["repos"] > 50


def test_site_packages_source_has_one_repo_per_distribution(tmp_path: Path) -> None:
    files = site_packages_files(SourceConfig(kind="site-packages"))
    pyyaml = {file.path: file for file in files if file.repo == "site-packages/pyyaml"}
    assert "yaml/__init__.py" in pyyaml
    assert Path(pyyaml["yaml/__init__.py"].location).is_file()
    assert not any(file.path.startswith("..") or "__pycache__" in file.path for file in files)

    # Reading only each distribution's top_level.txt keeps this fast (the language check reads nothing).
    report = ingest(
        tmp_path / "out",
        [{"kind": "site-packages"}],
        extensions={"top_level.txt": "toplevel"},
        languages=["toplevel"],
    )
    rows = documents(tmp_path / "out")
    assert any(
        row["repo"] == "site-packages/pyyaml" and row["content"].split() == ["_yaml", "yaml"] for row in rows
    )
    assert report.files_out == len(rows) > 5


@pytest.mark.slow
def test_files_source_reads_s3(tmp_path: Path, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3
    import datasets

    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="corpus")
    monkeypatch.delenv("AWS_ENDPOINT_URL")  # first from params only
    options = {"key": "test", "secret": "test", "client_kwargs": {"endpoint_url": s3_endpoint}}
    _write_stack_parquet(tmp_path / "stack.parquet", STACK_ROWS[:1])
    boto3.client("s3", endpoint_url=s3_endpoint).upload_file(
        str(tmp_path / "stack.parquet"), "corpus", "stack/part-0.parquet"
    )
    dataset = datasets.Dataset.from_dict({"content": [GOOD], "repo_name": ["ds/s3"], "path": ["s3.py"]})
    dataset.save_to_disk("s3://corpus/saved", storage_options=dict(options))

    # Endpoint and keys from params (the dataset is loaded with a fresh copy of the options).
    source = {"kind": "files", "paths": ["s3://corpus/stack/*.parquet", "s3://corpus/saved"]}
    ingest(tmp_path / "params", [{**source, "storage_options": options}])
    assert [(row["repo"], row["path"]) for row in documents(tmp_path / "params")] == [
        ("ds/s3", "s3.py"),
        ("octo/hello", "src/hello.py"),
    ]

    # Endpoint and keys from the standard AWS_* environment.
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    ingest(tmp_path / "env", [{"kind": "files", "paths": ["s3://corpus/stack"]}])
    assert [row["repo"] for row in documents(tmp_path / "env")] == ["octo/hello"]


@pytest.mark.parametrize(
    ("source", "named"),
    [
        (
            {"kind": "local", "paths": ["{tmp}/nowhere"]},
            "local source {tmp}/nowhere: {tmp}/nowhere does not exist",
        ),
        ({"kind": "local", "paths": ["{tmp}/empty"]}, "local source {tmp}/empty: no files found"),
        ({"kind": "files", "paths": ["{tmp}/*.parquet"]}, "files source {tmp}/*.parquet: no Parquet/JSONL"),
        (
            {"kind": "files", "paths": ["{tmp}/rowless.jsonl"]},
            "files source {tmp}/rowless.jsonl: no rows found",
        ),
    ],
)
def test_a_source_without_files_is_an_error_naming_it(tmp_path: Path, source: dict, named: str) -> None:
    (tmp_path / "empty" / "only-cache" / "__pycache__").mkdir(parents=True)
    (tmp_path / "rowless.jsonl").write_text("\n", encoding="utf-8")
    source = {**source, "paths": [path.format(tmp=tmp_path) for path in source["paths"]]}
    with pytest.raises(StageError) as error:
        ingest(tmp_path / "out", [source])
    assert named.format(tmp=tmp_path) in str(error.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"kind": "ftp", "paths": ["x"]}, "ingest.sources.0.kind: Input should be"),
        ({"kind": "local"}, "ingest.sources.0: Value error, a 'local' source needs 'paths'"),
        (
            {"kind": "files", "paths": ["x"], "columns": {"text": "body"}},
            "ingest.sources.0.columns: Value error",
        ),
        (
            {"kind": "python-stdlib", "paths": ["x"]},
            "ingest.sources.0: Value error, a 'python-stdlib' source takes no",
        ),
    ],
)
def test_invalid_sources_are_rejected_with_the_key_named(source: dict, message: str) -> None:
    raw = make_params().model_dump(by_alias=True, mode="json")
    raw["ingest"]["sources"] = [source]
    with pytest.raises(ParamsError) as error:
        parse_params(raw, source="p.yaml")
    assert f"p.yaml: {message}" in str(error.value)


@pytest.mark.slow
def test_command_line_exit_codes(tmp_path: Path, mlflow_uri: str) -> None:
    corpus = write_files(tmp_path / "corpus", {"r/a.py": GOOD})
    raw = make_params().model_dump(by_alias=True, mode="json")
    raw["ingest"]["sources"] = [{"kind": "local", "paths": [str(corpus)]}]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri, "PYTHONPATH": str(PROJECT_ROOT)}
    command = [sys.executable, "-m", "components.ingest", "--params", "params.yaml", "--output", "out"]

    ok = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert json.loads((tmp_path / "reports" / "ingest.json").read_text())["files_out"] == 1
    assert [row["path"] for row in documents(tmp_path / "out")] == ["a.py"]

    raw["ingest"]["sources"] = [{"kind": "local", "paths": [str(tmp_path / "missing")]}]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    bad = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert f"codemill ingest: error: ingest: local source {tmp_path}/missing" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_system_source_reads_other_languages_one_repo_per_directory_and_bundled_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from components.ingest import sources

    include = write_files(
        tmp_path / "usr" / "include",
        {"stdio.h": "int puts(const char *s);\n", "linux/fs.h": "#define FS 1\n"},
    )
    perl = write_files(tmp_path / "usr" / "share" / "perl", {"5.36/strict.pm": "package strict;\n1;\n"})
    node = write_files(
        tmp_path / "node",
        {
            "npm/lib/cli.js": "module.exports = 1;\n",
            "npm/README": "npm\n",
            "npm/node_modules/chalk/source/index.js": "module.exports = 2;\n",
            "npm/node_modules/@npmcli/git/lib/clone.js": "module.exports = 3;\n",
        },
    )
    monkeypatch.setattr(
        sources, "SYSTEM_CODE_ROOTS", (str(include), str(perl), str(node), str(tmp_path / "absent/*"))
    )

    report = ingest(tmp_path / "out", [{"kind": "system"}], languages=["c", "perl", "javascript"])

    label = str(tmp_path).strip("/").replace("/", "-")
    assert {(row["repo"], row["path"], row["lang"]) for row in documents(tmp_path / "out")} == {
        (f"system/{label}-usr-include", "stdio.h", "c"),
        (f"system/{label}-usr-include/linux", "fs.h", "c"),
        (f"system/{label}-usr-share-perl/5.36", "strict.pm", "perl"),
        (f"system/{label}-node/npm", "lib/cli.js", "javascript"),
        # bundled dependencies are their own repos (each its own upstream project)
        (f"system/{label}-node/npm/node_modules/chalk", "source/index.js", "javascript"),
        (f"system/{label}-node/npm/node_modules/@npmcli/git", "lib/clone.js", "javascript"),
    }
    assert {lang: n["files"] for lang, n in report.details["languages"].items()} == {
        "c": 2,
        "javascript": 3,
        "perl": 1,
    }
    assert report.drops == {"unknown_language": 1}


def test_language_caps_keep_each_languages_longest_sorted_prefix(tmp_path: Path) -> None:
    corpus = write_files(
        tmp_path / "corpus",
        {"a/one.py": "x = 1\n", "a/two.c": "int two;\n", "b/three.c": "int three;\n", "b/four.py": "y = 4\n"},
    )
    source = [{"kind": "local", "paths": [str(corpus)]}]
    report = ingest(tmp_path / "out", source, languages=["python", "c"], max_bytes_per_language={"c": 12})
    assert [(row["repo"], row["path"]) for row in documents(tmp_path / "out")] == [
        ("a", "one.py"),
        ("a", "two.c"),
        ("b", "four.py"),
    ]
    assert report.drops == {"cap_language_bytes": 1}
    with pytest.raises(ParamsError, match="max_bytes_per_language"):
        make_params(ingest={"max_bytes_per_language": {"C++": 10}})
