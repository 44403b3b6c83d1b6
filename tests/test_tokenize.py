"""The tokenize stage on small corpora written by the tests: tokenizer, split by repo, packed files."""

from __future__ import annotations

import json
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import mlflow
import numpy as np
import pyarrow as pa
import pytest
import yaml

from components.errors import StageError
from components.params import ParamsError
from components.report import StageReport
from components.shards import BASE_SCHEMA, content_sha256, document_id, list_shards, write_shard
from components.stage_runner import call_stage
from components.tokenize import STAGE, pipeline
from components.tokens.packing import metadata_length, split_repos, token_dtype, wants_metadata
from components.tokens.tokenizer import SPECIAL_TOKENS, TokenCodec, load_tokenizer, train_tokenizer
from tests.conftest import PROJECT_ROOT, make_params

#: Texts a code tokenizer must round-trip byte for byte.
AWKWARD_TEXTS = [
    "def f(x):\n\treturn x  \n",
    "line one\r\nline two\r\n\r\n",
    "    trailing spaces   \n\n\n",
    "naïve = 'café'  # 日本語のコメント\n",
    "party = '🎉🐍'  # emoji outside the BMP\n",
    "".join(chr(code) for code in range(1, 256)),  # every non-NUL byte value, read as latin-1 text
    "x = '<|endoftext|>' + '<fim_prefix>'\n",
    "",
    " leading space and \u00a0no-break space\u2028separator\n",
]


def module_source(repo: str, index: int) -> str:
    """A small, realistic Python module that differs per repo and index."""
    name = f"{repo.replace('-', '_')}_{index}"
    return (
        f'"""Helpers number {index} of {repo}."""\n\nimport os\n\n\n'
        f"def scale_{name}(values, factor={index}):\n"
        '    """Multiply every value by the factor and sum them."""\n'
        "    total = 0\n"
        "    for value in values:\n"
        "        total += value * factor\n"
        "    return total\n\n\n"
        f"class Reader{index}:\n"
        "    def __init__(self, root):\n"
        f'        self.path = os.path.join(root, "{repo}", "data_{index}.txt")\n\n'
        "    def read(self):\n"
        '        with open(self.path, encoding="utf-8") as handle:\n'
        "            return handle.read()\n"
    )


def corpus(repos: int = 8, files: int = 3) -> dict[tuple[str, str], str]:
    """``{(repo, path): content}``: ``repos`` repos of ``files`` modules, plus the awkward texts."""
    documents = {
        (f"org-{r}/project-{r}", f"pkg/module_{i}.py"): module_source(f"project-{r}", i)
        for r in range(repos)
        for i in range(files)
    }
    for i, text in enumerate(AWKWARD_TEXTS):
        documents[(f"org-{i % repos}/project-{i % repos}", f"odd/case_{i}.py")] = text
    return documents


def write_clean_shards(directory: Path, documents: dict[tuple[str, str], str], shards: int = 2) -> Path:
    """Write ``documents`` as ``shards`` Parquet shards of the clean stage's schema (unsorted on purpose)."""
    rows = [
        {
            "id": document_id(repo, path),
            "repo": repo,
            "path": path,
            "lang": "c" if path.endswith(".c") else "python",
            "content": content,
            "size_bytes": len(content.encode("utf-8")),
            "sha256": content_sha256(content),
            "license": "mit",
            "stars": len(path) if "0" in repo else None,
        }
        for (repo, path), content in reversed(documents.items())
    ]
    directory.mkdir(parents=True, exist_ok=True)
    for shard in range(shards):
        table = pa.Table.from_pylist(rows[shard::shards], schema=BASE_SCHEMA)
        write_shard(table, str(directory / f"part-{shard:05d}.parquet"))
    return directory


def tokenize(
    input_dir: Path, output: Path, executor: dict[str, object] | None = None, **tokenize_params: object
) -> StageReport:
    """Run the stage with a small vocabulary (other ``tokenize`` keys as given), by default in-process."""
    params = make_params(tokenize={"vocab_size": 400, **tokenize_params}, executor=executor or {"workers": 1})
    return call_stage(STAGE, params, [str(input_dir)], str(output))


@lru_cache(maxsize=1)
def tiny_codec() -> TokenCodec:
    """A codec of a tokenizer (vocab 500) trained on a few KB of generated code."""
    return TokenCodec(train_tokenizer(list(corpus().values()), vocab_size=500, min_frequency=2))


def output_files(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` by relative path."""
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()
    }


def test_tokenizer_round_trips_code_byte_for_byte() -> None:
    codec = tiny_codec()
    for text in AWKWARD_TEXTS:
        ids = codec.encode(text)
        assert codec.decode(ids) == text
        assert codec.decode(ids).encode("utf-8") == text.encode("utf-8")
    # Special-token strings inside code are plain text: only the pipeline inserts special ids.
    assert min(codec.encode(AWKWARD_TEXTS[6])) >= len(SPECIAL_TOKENS)
    assert 256 + len(SPECIAL_TOKENS) < codec.vocab_size <= 500  # merges were learned (the corpus is small)
    assert [codec.tokenizer.id_to_token(i) for i in range(len(SPECIAL_TOKENS))] == list(SPECIAL_TOKENS)


def test_tokenizer_training_is_deterministic() -> None:
    texts = list(corpus().values())
    first = train_tokenizer(texts, vocab_size=450, min_frequency=2).to_str()
    assert train_tokenizer(texts, vocab_size=450, min_frequency=2).to_str() == first
    # The order of the texts does not matter: the stage streams the training split shard by shard.
    assert train_tokenizer(reversed(texts), vocab_size=450, min_frequency=2).to_str() == first
    other = [*texts, "zebra_quux = 'xylophone'\n" * 50]
    assert train_tokenizer(other, vocab_size=450, min_frequency=2).to_str() != first


def test_split_by_repo_is_deterministic_disjoint_and_never_empty() -> None:
    repos = [f"owner/repo-{i}" for i in range(1000)]
    held_out = split_repos(repos, 0.2)
    assert held_out == split_repos(list(reversed(repos)), 0.2)
    assert 150 < len(held_out) < 250
    assert held_out <= set(repos)
    # Extreme fractions still leave one repo on each side.
    assert len(split_repos(repos[:5], 1e-9)) == 1
    assert len(split_repos(repos[:5], 1 - 1e-9)) == 4
    with pytest.raises(ValueError, match="at least 2"):
        split_repos(["only/one", "only/one"], 0.5)


def test_metadata_choice_is_deterministic_per_document_and_seed() -> None:
    ids = [document_id("r", f"f{i}.py") for i in range(2000)]
    chosen = [wants_metadata(doc_id, 7, 0.3) for doc_id in ids]
    assert chosen == [wants_metadata(doc_id, 7, 0.3) for doc_id in ids]
    assert 0.25 < sum(chosen) / len(ids) < 0.35
    assert chosen != [wants_metadata(doc_id, 8, 0.3) for doc_id in ids]


def test_token_dtype_follows_the_vocabulary() -> None:
    assert token_dtype(4096) == np.uint16
    assert token_dtype(65535) == np.uint16
    assert token_dtype(65536) == np.uint32


def test_tokenize_params_are_validated() -> None:
    with pytest.raises(ParamsError, match=r"tokenize\.vocab_size"):
        make_params(tokenize={"vocab_size": 100})
    with pytest.raises(ParamsError, match=r"tokenize\.val_fraction"):
        make_params(tokenize={"val_fraction": 0.0})
    with pytest.raises(ParamsError, match=r"tokenize\.fim_rat"):
        make_params(tokenize={"fim_rat": 0.5})


def test_stage_packs_documents_with_eos_and_splits_by_repo(tmp_path: Path) -> None:
    documents = corpus()  # one of the awkward texts is empty: dropped with a reason
    clean = write_clean_shards(tmp_path / "clean", documents)
    out = tmp_path / "tokenize"
    report = tokenize(clean, out, val_fraction=0.25, metadata_rate=0.5)

    index = json.loads((out / "index.json").read_text())
    codec = TokenCodec.load(out)
    eos = index["eos_id"]
    assert index["dtype"] == "uint16" and index["vocab_size"] == codec.vocab_size <= 400
    assert index["special_tokens"] == {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    assert report.drops == {"empty_content": 1}
    assert report.files_in == len(documents) and report.files_out == len(documents) - 1

    by_id = {document_id(repo, path): (repo, path, text) for (repo, path), text in documents.items()}
    repos = {}
    for split in ("train", "val"):
        stats = index["splits"][split]
        tokens = np.fromfile(out / f"{split}.bin", dtype=np.uint16)
        starts = np.load(out / f"{split}.docs.npy")
        ids = json.loads((out / f"{split}.ids.json").read_text())
        doc_bytes = np.load(out / f"{split}.doc_bytes.npy")
        assert stats["tokens"] == len(tokens) and stats["documents"] == len(starts) == len(ids) == len(
            doc_bytes
        )
        assert starts.dtype == np.int64 and starts[0] == 0
        ends = np.append(starts[1:], len(tokens))
        assert np.all(tokens[ends - 1] == eos)  # every document ends with EOS ...
        assert np.count_nonzero(tokens == eos) == len(starts)  # ... and holds no other
        # Documents in (repo, path) order, each decoding to its content after the metadata prefix.
        assert [by_id[i][:2] for i in ids] == sorted(by_id[i][:2] for i in ids)
        with_prefix = 0
        for doc_id, start, end, size in zip(ids, starts, ends, doc_bytes, strict=True):
            doc = tokens[start:end]
            prefix = metadata_length(doc, codec.special, codec.newline_id)
            with_prefix += prefix > 0
            assert codec.decode(doc[prefix:-1]) == by_id[doc_id][2]
            assert size == len(by_id[doc_id][2].encode("utf-8"))
        assert stats["metadata_documents"] == with_prefix
        assert stats["bytes"] == int(doc_bytes.sum())
        repos[split] = {by_id[i][0] for i in ids}
        assert stats["repos"] == len(repos[split])
    assert not repos["train"] & repos["val"]
    assert repos["train"] | repos["val"] == {repo for repo, _ in documents}
    assert index["splits"]["val"]["metadata_documents"] == 0  # val: never a prefix (bits-per-byte)
    assert 0 < index["splits"]["train"]["metadata_documents"] < index["splits"]["train"]["documents"]
    assert report.metrics["tokens.train"] == index["splits"]["train"]["tokens"]
    assert report.metrics["vocab_size"] == index["vocab_size"]
    assert report.details["val_repos"] == sorted(repos["val"])

    hf = load_tokenizer(out)
    assert (hf.eos_token_id, hf.pad_token_id, hf.bos_token_id) == (0, 4, 0)
    text = AWKWARD_TEXTS[3]
    assert hf.decode(hf(text)["input_ids"]) == text
    assert hf.convert_tokens_to_ids("<fim_middle>") == 2
    chat = hf.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_metadata_prefix_is_starcoder_format(tmp_path: Path) -> None:
    documents = corpus(repos=2, files=1)
    clean = write_clean_shards(tmp_path / "clean", documents)
    tokenize(clean, tmp_path / "out", metadata_rate=1.0)
    codec = TokenCodec.load(tmp_path / "out")
    tokens = np.fromfile(tmp_path / "out" / "train.bin", dtype=np.uint16)
    starts = np.load(tmp_path / "out" / "train.docs.npy")
    ids = json.loads((tmp_path / "out" / "train.ids.json").read_text())
    by_id = {document_id(repo, path): (repo, path, text) for (repo, path), text in documents.items()}
    ends = np.append(starts[1:], len(tokens))
    for doc_id, start, end in zip(ids, starts, ends, strict=True):
        repo, path, content = by_id[doc_id]
        stars = len(path) if "0" in repo else 0
        expected = f"<reponame>{repo}<filename>{path}<gh_stars>{stars}\n{content}<|endoftext|>"
        assert codec.decode(tokens[start:end]) == expected


def test_stage_needs_two_repos(tmp_path: Path) -> None:
    clean = write_clean_shards(
        tmp_path / "clean", {("solo/repo", f"m{i}.py"): f"x = {i}\n" for i in range(4)}
    )
    with pytest.raises(StageError, match=r"tokenize\.val_fraction"):
        tokenize(clean, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(StageError, match=r"input 'documents': .*missing does not exist"):
        tokenize(tmp_path / "missing", tmp_path / "out")


def test_output_is_byte_identical_across_workers_batches_and_sharding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    documents = corpus(repos=6, files=2)
    settings = {"val_fraction": 0.3, "metadata_rate": 0.5}
    three = write_clean_shards(tmp_path / "three", documents, shards=3)
    tokenize(three, tmp_path / "one_worker", **settings)
    expected = output_files(tmp_path / "one_worker")
    assert {"train.bin", "val.bin", "index.json", "tokenizer/tokenizer.json"} <= set(expected)

    tokenize(three, tmp_path / "two_workers", executor={"workers": 2}, **settings)
    assert output_files(tmp_path / "two_workers") == expected

    monkeypatch.setattr(pipeline, "BATCH_CONTENT_BYTES", 1)  # one shard per map_shards call
    tokenize(three, tmp_path / "batched", **settings)
    assert output_files(tmp_path / "batched") == expected
    single = write_clean_shards(tmp_path / "single", documents, shards=1)
    tokenize(single, tmp_path / "single_out", **settings)
    assert output_files(tmp_path / "single_out") == expected  # global (repo, path) order, whatever the shards
    assert not list(tmp_path.glob("**/*.spool"))


def test_tokenizer_sample_takes_training_documents_in_id_order_up_to_train_bytes(tmp_path: Path) -> None:
    documents = corpus(repos=4, files=3)
    clean = write_clean_shards(tmp_path / "clean", documents, shards=3)
    shards = list_shards(str(clean))
    (tmp_path / "excluded").mkdir()
    scans = [
        pipeline.scan_shard(pipeline.ScanTask(s, str(tmp_path / "excluded" / Path(s).name))) for s in shards
    ]
    val_repos = frozenset({"org-1/project-1"})
    train = sorted(
        (document_id(repo, path), text)
        for (repo, path), text in documents.items()
        if text and repo not in val_repos
    )
    budget = sum(len(text.encode("utf-8")) for _, text in train[:5])
    assert list(pipeline.tokenizer_texts(shards, scans, val_repos, budget)) == [t for _, t in train[:5]]
    assert list(pipeline.tokenizer_texts(shards, scans, val_repos, 1)) == [train[0][1]]  # at least one
    everything = list(pipeline.tokenizer_texts(shards, scans, val_repos, None))
    assert sorted(everything) == sorted(text for _, text in train)


@pytest.mark.slow
def test_cli_run_is_byte_identical_to_an_in_process_run_and_logs_the_tokenizer(
    tmp_path: Path, mlflow_uri: str
) -> None:
    clean = write_clean_shards(tmp_path / "clean", corpus())
    tokenize(clean, tmp_path / "first", val_fraction=0.25)
    raw = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    raw["tokenize"].update(vocab_size=400, val_fraction=0.25)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    report_path = tmp_path / "reports" / "tokenize.json"
    command = [sys.executable, "-m", "components.tokenize", "--params", str(params), "--input", str(clean)]
    result = subprocess.run(
        [*command, "--output", str(tmp_path / "second"), "--report", str(report_path)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    first, second = output_files(tmp_path / "first"), output_files(tmp_path / "second")
    assert sorted(first) == sorted(second) and "tokenizer/tokenizer.json" in first
    assert first == second

    report = json.loads(report_path.read_text())
    assert report["metrics"]["tokens.val"] > 0
    runs = mlflow.search_runs(search_all_experiments=True, filter_string="tags.`codemill.stage` = 'tokenize'")
    artifacts = mlflow.MlflowClient().list_artifacts(runs.iloc[0]["run_id"], "tokenizer")
    assert {Path(a.path).name for a in artifacts} >= {"tokenizer.json", "tokenizer_config.json"}


def test_mixture_weights_repeat_or_thin_training_documents_by_language(tmp_path: Path) -> None:
    documents = corpus(repos=8, files=4)
    documents.update(
        {
            (f"org-{r}/project-{r}", f"src/lib_{i}.c"): f"int lib_{r}_{i}(int x) {{ return x * {i}; }}\n"
            for r in range(8)
            for i in range(3)
        }
    )
    clean = write_clean_shards(tmp_path / "clean", documents)
    plain = tokenize(clean, tmp_path / "plain", val_fraction=0.25)
    weights = {"languages": {"c": 2.0, "python": 0.5}}
    mixed = tokenize(clean, tmp_path / "mixed", val_fraction=0.25, mixture=weights)

    before, after = (report.details["languages"] for report in (plain, mixed))
    assert after["c"]["train_documents_written"] == 2 * before["c"]["train_documents_written"] > 0
    train_ids = json.loads((tmp_path / "mixed" / "train.ids.json").read_text())
    python_ids = {
        document_id(repo, path)
        for (repo, path), text in documents.items()
        if not path.endswith(".c") and text
    }
    kept = [
        doc_id
        for doc_id in json.loads((tmp_path / "plain" / "train.ids.json").read_text())
        if doc_id in python_ids
    ]
    seed = json.loads((tmp_path / "mixed" / "index.json").read_text())["seed"]
    expected = [doc_id for doc_id in kept if pipeline.mixture_repeats(doc_id, 0.5, seed)]
    assert [doc_id for doc_id in train_ids if doc_id in python_ids] == expected
    assert 0 < len(expected) < len(kept)
    assert (
        json.loads((tmp_path / "mixed" / "index.json").read_text())["mixture"]["languages"]
        == weights["languages"]
    )
    for name in ("val.bin", "val.ids.json", "val.docs.npy"):  # validation is never reweighted
        assert (tmp_path / "mixed" / name).read_bytes() == (tmp_path / "plain" / name).read_bytes()
