"""The dedup stage on planted duplicates: every level, survivor order, input-order independence, report."""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
import pytest

from components.dedup import STAGE
from components.dedup.pipeline import is_permissive
from components.errors import StageError
from components.params import ParamsError
from components.params.dedup import DedupConfig
from components.report import read_report
from components.shards import BASE_SCHEMA, content_sha256, document_id, list_shards, read_shard, write_shard
from components.stage_runner import call_stage, stage_main
from tests.conftest import make_params

VOCABULARY = [f"name{i}" for i in range(3000)] + ["def", "return", "self", "import", "if", "for", "in"]


def random_words(rng: random.Random, n: int = 300) -> list[str]:
    """``n`` words drawn from a large vocabulary: two such documents share almost no 5-word shingle."""
    return [rng.choice(VOCABULARY) for _ in range(n)]


def render(words: list[str], spacing: str = " ") -> str:
    """Code-like text: 8 words per indented line."""
    lines = [spacing.join(words[i : i + 8]) for i in range(0, len(words), 8)]
    return "\n".join(f"    {line}(x)" if i % 3 else f"def {line}:" for i, line in enumerate(lines)) + "\n"


def mutate(words: list[str], positions: list[int]) -> list[str]:
    """A copy with the words at ``positions`` replaced (each change touches at most 5 shingles)."""
    changed = list(words)
    for position in positions:
        changed[position] = f"changed{position}"
    return changed


def document(
    repo: str, path: str, content: str, license: str | None = None, stars: int | None = None
) -> dict:
    """A row of BASE_SCHEMA."""
    return {
        "id": document_id(repo, path),
        "repo": repo,
        "path": path,
        "lang": "python",
        "content": content,
        "size_bytes": len(content.encode()),
        "sha256": content_sha256(content),
        "license": license,
        "stars": stars,
    }


def write_corpus(directory: Path, rows: list[dict], n_shards: int = 1) -> str:
    """Write ``rows`` round-robin into ``n_shards`` shards; returns the directory."""
    directory.mkdir(parents=True)
    for shard in range(n_shards):
        table = pa.Table.from_pylist(rows[shard::n_shards], schema=BASE_SCHEMA)
        write_shard(table, str(directory / f"part-{shard:05d}.parquet"))
    return str(directory)


def planted_corpus() -> list[dict]:
    """Distinct files plus planted duplicates whose survivors are fixed by licence, stars and name.

    - ``a/one``: 5 distinct files (MIT, 10 stars).
    - ``b/two/x.py``: ``a/one/f1.py`` with different whitespace (MIT, 50 stars: it survives).
    - ``c/three/y.py``: ``a/one/f2.py`` with 4 words changed, Jaccard 0.89 (GPL, 1000 stars: MIT wins).
    - ``d/fork``: a copy of ``a/one`` (no licence, 100 stars) whose ``f3.py`` has 3 words changed (0.91).
    - ``g/alpha/u.py`` == ``h/beta/u.py`` (same licence and stars: smallest repo/path survives).
    - ``z/solo``: 3 unrelated files.
    """
    rng = random.Random(7)
    one = [random_words(rng) for _ in range(5)]
    shared = random_words(rng)
    rows = [document("a/one", f"f{i}.py", render(words), "MIT", 10) for i, words in enumerate(one)]
    rows.append(document("b/two", "x.py", render(one[1], spacing="  \t "), "MIT", 50))
    rows.append(document("b/two", "other.py", render(random_words(rng)), "MIT", 50))
    rows.append(document("c/three", "y.py", render(mutate(one[2], [20, 90, 160, 250])), "GPL-3.0", 1000))
    for i, words in enumerate(one):
        content = render(mutate(words, [40, 140, 240]) if i == 3 else words)
        rows.append(document("d/fork", f"f{i}.py", content, None, 100))
    rows.append(document("g/alpha", "u.py", render(shared), "Apache-2.0", 5))
    rows.append(document("h/beta", "u.py", render(shared), "apache-2.0", 5))
    rows += [document("z/solo", f"s{i}.py", render(random_words(rng))) for i in range(3)]
    return rows


ALL_FILES = {(row["repo"], row["path"]) for row in planted_corpus()}
FORK_COPIES = {("d/fork", f"f{i}.py") for i in (0, 1, 2, 4)}
EXPECTED_DROPS = {
    "none": set(),
    "exact": {("a/one", "f1.py"), ("h/beta", "u.py")} | FORK_COPIES,
    "file": {("a/one", "f1.py"), ("h/beta", "u.py"), ("c/three", "y.py")}
    | FORK_COPIES
    | {("d/fork", "f3.py")},
    "repo": {("d/fork", f"f{i}.py") for i in range(5)} | {("h/beta", "u.py")},  # single-file repo copies
}


def run_dedup(tmp_path: Path, documents: list[dict], n_shards: int = 1, workers: int = 1, **dedup) -> tuple:
    """Run the stage on ``documents``; returns (report, output rows keyed by (repo, path), output dir)."""
    source = write_corpus(tmp_path / "in", documents, n_shards)
    output = str(tmp_path / "out")
    params = make_params(dedup=dedup, executor={"workers": workers})
    report = call_stage(STAGE, params, [source], output)
    kept = {
        (row["repo"], row["path"]): row
        for path in list_shards(output)
        for row in read_shard(path).to_pylist()
    }
    return report, kept, output


@pytest.mark.parametrize("level", ["none", "exact", "file", "repo"])
def test_each_level_removes_what_it_should(tmp_path: Path, level: str) -> None:
    report, kept, _ = run_dedup(tmp_path, planted_corpus(), level=level)
    assert set(kept) == ALL_FILES - EXPECTED_DROPS[level]
    assert report.files_in == len(ALL_FILES)
    assert report.files_out == len(kept)
    assert sum(report.drops.values()) == len(EXPECTED_DROPS[level])
    assert report.metrics["dedup_ratio"] == pytest.approx(len(EXPECTED_DROPS[level]) / len(ALL_FILES))


def test_drop_reasons_and_cluster_columns_at_file_level(tmp_path: Path) -> None:
    report, kept, _ = run_dedup(tmp_path, planted_corpus(), level="file")
    assert report.drops == {"exact_duplicate": 6, "near_duplicate": 2}
    survivor = kept[("b/two", "x.py")]  # beats a/one/f1.py (more stars) and d/fork/f1.py (no licence)
    assert survivor["dup_cluster"] == survivor["id"] and survivor["dup_cluster_size"] == 3
    assert kept[("a/one", "f2.py")]["dup_cluster_size"] == 3  # + its fork copy and the near-dup c/three/y.py
    assert kept[("a/one", "f3.py")]["dup_cluster_size"] == 2  # + the mutated fork copy
    assert kept[("g/alpha", "u.py")]["dup_cluster_size"] == 2  # tie on licence and stars: smallest repo
    solo = kept[("z/solo", "s0.py")]
    assert solo["dup_cluster"] == solo["id"] and solo["dup_cluster_size"] == 1
    assert report.details["bands"] == 25 and report.details["rows"] == 10
    assert report.metrics["duplicate_clusters"] == 6
    assert report.metrics["candidate_pairs"] >= report.metrics["near_duplicate_pairs"] >= 2


def test_repo_level_keeps_the_preferred_repo_and_cross_repo_file_copies(tmp_path: Path) -> None:
    report, kept, _ = run_dedup(tmp_path, planted_corpus(), level="repo")
    assert report.drops == {"repo_duplicate": 6}
    assert kept[("a/one", "f0.py")]["dup_cluster"] == "a/one"  # MIT beats 100 stars without licence
    assert kept[("a/one", "f0.py")]["dup_cluster_size"] == 2
    assert kept[("b/two", "x.py")]["dup_cluster"] == "b/two"
    assert kept[("b/two", "x.py")]["dup_cluster_size"] == 1


def test_none_passes_through_with_singleton_columns(tmp_path: Path) -> None:
    rows = planted_corpus()
    report, kept, output = run_dedup(tmp_path, rows, n_shards=2, level="none")
    assert report.drops == {} and len(kept) == len(rows)
    assert all(row["dup_cluster"] == row["id"] and row["dup_cluster_size"] == 1 for row in kept.values())
    schema = read_shard(list_shards(output)[0]).schema
    assert schema.names == [*BASE_SCHEMA.names, "dup_cluster", "dup_cluster_size"]
    assert schema.field("dup_cluster_size").type == pa.int64()


def test_survivors_do_not_depend_on_input_order(tmp_path: Path) -> None:
    rows = planted_corpus()
    shuffled = list(rows)
    random.Random(3).shuffle(shuffled)
    _, kept, _ = run_dedup(tmp_path / "a", rows, n_shards=1, level="file")
    _, kept_shuffled, output = run_dedup(tmp_path / "b", shuffled, n_shards=3, workers=2, level="file")
    assert len(list_shards(output)) == 3
    clusters = {key: (row["dup_cluster"], row["dup_cluster_size"]) for key, row in kept.items()}
    assert clusters == {
        key: (row["dup_cluster"], row["dup_cluster_size"]) for key, row in kept_shuffled.items()
    }


def test_output_is_byte_identical_across_runs_and_keeps_shard_names(tmp_path: Path) -> None:
    rows = [*planted_corpus(), document("y/empty", "e.py", "")]
    outputs = [run_dedup(tmp_path / name, rows, n_shards=3, level="file")[2] for name in ("a", "b")]
    first, second = (list_shards(output) for output in outputs)
    assert [Path(p).name for p in first] == [f"part-{i:05d}.parquet" for i in range(3)]
    assert [Path(p).read_bytes() for p in first] == [Path(p).read_bytes() for p in second]


def test_empty_shard_gives_empty_shard_with_schema(tmp_path: Path) -> None:
    rows = planted_corpus()[:2]
    _, kept, output = run_dedup(tmp_path, rows, n_shards=3, level="file")
    shards = list_shards(output)
    assert len(shards) == 3 and len(kept) == 2
    empty = read_shard(shards[2])
    assert empty.num_rows == 0 and "dup_cluster" in empty.schema.names


def test_jaccard_recheck_removes_lsh_false_positives(tmp_path: Path) -> None:
    rng = random.Random(11)
    words = random_words(rng)
    changed = mutate(words, list(range(5, 300, 10)))  # Jaccard ~0.4: well below 0.7
    rows = [document("a/a", "a.py", render(words)), document("b/b", "b.py", render(changed))]
    loose = {"level": "file", "bands": 128, "rows": 1}  # any equal minimum makes a candidate
    report, kept, _ = run_dedup(tmp_path / "checked", rows, **loose, verify_jaccard=True)
    assert len(kept) == 2
    assert report.metrics["candidate_pairs"] == 1 and report.metrics["jaccard_false_positives"] == 1
    report, kept, _ = run_dedup(tmp_path / "unchecked", rows, **loose, verify_jaccard=False)
    assert len(kept) == 1 and report.drops["near_duplicate"] == 1


def test_missing_column_is_named(tmp_path: Path) -> None:
    source = tmp_path / "in"
    source.mkdir()
    write_shard(pa.table({"id": ["x"], "content": ["y"]}), str(source / "part-00000.parquet"))
    with pytest.raises(StageError, match=r"part-00000.parquet: missing column\(s\) repo, path"):
        call_stage(STAGE, make_params(executor={"workers": 1}), [str(source)], str(tmp_path / "out"))


@pytest.mark.parametrize(
    ("dedup", "message"),
    [
        ({"bands": 30, "rows": 10}, r"dedup\.rows: .*30 \* 10 = 300 exceeds dedup\.num_perm = 256"),
        ({"bands": 20}, r"dedup\.rows: .*set both dedup\.bands and dedup\.rows"),
        ({"threshold": 0.0}, r"dedup\.threshold"),
        ({"level": "folder"}, r"dedup\.level"),
        ({"ngram": "5"}, r"dedup\.ngram"),
    ],
)
def test_invalid_params_are_rejected_with_the_key_named(dedup: dict, message: str) -> None:
    with pytest.raises(ParamsError, match=message):
        make_params(dedup=dedup)


def test_explicit_bands_and_rows_are_used(tmp_path: Path) -> None:
    assert DedupConfig(bands=16, rows=16).bands == 16
    report, _, _ = run_dedup(tmp_path, planted_corpus()[:3], level="file", bands=32, rows=8)
    assert (report.details["bands"], report.details["rows"]) == (32, 8)


def test_cli_reports_bad_params_without_traceback(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("dedup:\n  bands: 300\n  rows: 1\n", encoding="utf-8")
    code = stage_main(STAGE, ["--params", str(params), "--input", "x", "--output", "y"])
    assert code == 2
    assert "dedup.rows" in capsys.readouterr().err


def test_repo_level_survivors_do_not_depend_on_how_repos_are_split_over_shards(tmp_path: Path) -> None:
    rows = planted_corpus()
    shuffled = list(rows)
    random.Random(5).shuffle(shuffled)  # repos' files land in different shards
    _, kept, _ = run_dedup(tmp_path / "a", rows, n_shards=1, level="repo")
    _, kept_shuffled, _ = run_dedup(tmp_path / "b", shuffled, n_shards=4, level="repo")
    clusters = {key: (row["dup_cluster"], row["dup_cluster_size"]) for key, row in kept.items()}
    assert clusters == {
        key: (row["dup_cluster"], row["dup_cluster_size"]) for key, row in kept_shuffled.items()
    }


@pytest.mark.parametrize("level", ["exact", "file", "repo"])
def test_empty_input_gives_empty_output(tmp_path: Path, level: str) -> None:
    report, kept, output = run_dedup(tmp_path, [], n_shards=1, level=level)
    assert kept == {} and report.files_in == 0 and report.metrics["dedup_ratio"] == 0.0
    assert "dup_cluster" in read_shard(list_shards(output)[0]).schema.names


def test_licence_values_are_matched_by_parts() -> None:
    patterns = tuple(DedupConfig().permissive_licenses)
    assert is_permissive("MIT", patterns) and is_permissive("BSD-3-Clause", patterns)
    assert is_permissive("gpl-3.0, mit", patterns) and is_permissive("GPL-2.0 OR Apache-2.0", patterns)
    assert not is_permissive("GPL-3.0", patterns) and not is_permissive(None, patterns)
    assert not is_permissive("mitigated", patterns)


def test_cli_runs_the_stage_and_writes_its_report(tmp_path: Path, mlflow_uri: str) -> None:
    source = write_corpus(tmp_path / "in", planted_corpus())
    params = tmp_path / "params.yaml"
    params.write_text("executor:\n  workers: 1\ndedup:\n  level: file\n", encoding="utf-8")
    report_path = tmp_path / "reports" / "dedup.json"
    argv = ["--params", str(params), "--input", source, "--output", str(tmp_path / "out")]
    assert stage_main(STAGE, [*argv, "--report", str(report_path)]) == 0
    report = read_report(report_path)
    assert report["drops"] == {"exact_duplicate": 6, "near_duplicate": 2}
    assert report["details"]["bands"] == 25 and report["metrics"]["dedup_ratio"] == pytest.approx(8 / 18)
