"""SFT data: JSON-lines formats, chat formatting with prompt masks, the collator, mining, stage plumbing."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
import torch
from pydantic import ValidationError

from components.benchmarks import humaneval_file, read_problems
from components.errors import StageError
from components.params.clean import DecontamConfig
from components.params.evaluate import default_benchmarks
from components.params.sft import MinedConfig, SftConfig, SftStageConfig
from components.sft import StagedBatches, StagedSchedule, stage_steps
from components.sft.data import (
    IGNORE_INDEX,
    SftBatches,
    collate,
    encode_conversation,
    pair_messages,
    read_conversations,
)
from components.sft.mine import mine_pairs, pairs_from_source
from components.shards import BASE_SCHEMA, make_document, write_shard
from components.tokens.packing import split_paths
from components.tokens.tokenizer import to_transformers, train_tokenizer
from components.train.optim import Cosine

CODE = '''def add(a, b):
    """Add two numbers."""
    total = a + b
    return total


class Counter:
    """Count things."""

    def __init__(self):
        self.count = 0

    def bump(self):
        self.count += 1
'''


@pytest.fixture(scope="module")
def tokenizer():
    texts = [CODE, "Write a function that adds numbers.\nThe answer is here.\n"] * 20
    return to_transformers(train_tokenizer(texts, vocab_size=400, min_frequency=2))


def _write_jsonl(path: Path, lines: list[str]) -> str:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_collator_masks_exactly_the_prompt_and_padding(tokenizer) -> None:
    instruction, response = "Write a function that adds numbers.", CODE
    example = encode_conversation(pair_messages(instruction, response), tokenizer)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": instruction}], tokenize=False, add_generation_prompt=True
    )
    prompt_len = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    full = tokenizer.apply_chat_template(pair_messages(instruction, response), tokenize=False)
    assert example.tokens.tolist() == tokenizer(full, add_special_tokens=False)["input_ids"]

    short = encode_conversation(pair_messages("Hi", "ok"), tokenizer)
    input_ids, labels = collate([short, example], tokenizer.pad_token_id, max_len=10_000)
    assert input_ids.shape == labels.shape == (2, len(example.tokens))
    row = labels[1]
    assert (row[:prompt_len] == IGNORE_INDEX).all()
    assert torch.equal(row[prompt_len:], input_ids[1, prompt_len:])
    assert tokenizer.decode(row[prompt_len:].tolist()) == response + "<|im_end|>\n"
    # The short example: padded with <fim_pad>, labels -100 there.
    length = len(short.tokens)
    assert tokenizer.pad_token == "<fim_pad>"
    assert (input_ids[0, length:] == tokenizer.pad_token_id).all()
    assert (labels[0, length:] == IGNORE_INDEX).all()
    assert (labels[0, :length] != IGNORE_INDEX).sum() == short.trained_tokens > 0

    truncated_ids, truncated_labels = collate([example], tokenizer.pad_token_id, max_len=prompt_len + 3)
    assert truncated_ids.shape == (1, prompt_len + 3)
    assert (truncated_labels[0, prompt_len:] != IGNORE_INDEX).all()


def test_multi_turn_trains_every_assistant_turn_and_loss_on_prompt(tokenizer) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Add?"},
        {"role": "assistant", "content": "a + b"},
        {"role": "user", "content": "Count?"},
        {"role": "assistant", "content": "count += 1"},
    ]
    example = encode_conversation(messages, tokenizer)
    trained = [token for token, label in zip(example.tokens, example.labels, strict=True) if label >= 0]
    assert tokenizer.decode(trained) == "a + b<|im_end|>\ncount += 1<|im_end|>\n"
    everything = encode_conversation(messages, tokenizer, loss_on_prompt=True)
    assert everything.labels.tolist() == everything.tokens.tolist() == example.tokens.tolist()
    plain = encode_conversation(pair_messages("Add?", "a + b"), tokenizer, chat_template=False)
    assert tokenizer.decode(plain.tokens.tolist()) == "Add?\na + b<|endoftext|>"
    assert tokenizer.decode([t for t, lab in zip(plain.tokens, plain.labels, strict=True) if lab >= 0]) == (
        "a + b<|endoftext|>"
    )


def test_both_jsonl_formats_give_the_same_conversation(tmp_path: Path, tokenizer) -> None:
    pair = {"instruction": "Add?", "response": "a + b"}
    chat = {"messages": [{"role": "user", "content": "Add?"}, {"role": "assistant", "content": "a + b"}]}
    path = _write_jsonl(tmp_path / "mixed.jsonl", [json.dumps(pair), "", json.dumps(chat)])
    first, second = read_conversations(path)
    assert first == second == pair_messages("Add?", "a + b")
    assert encode_conversation(first, tokenizer).tokens.tolist() == (
        encode_conversation(second, tokenizer).tokens.tolist()
    )


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ('{"instruction": "Add?", "response": ', "invalid JSON"),
        ('{"instruction": "Add?"}', "'instruction' and 'response'"),
        ('{"messages": [{"role": "robot", "content": "x"}]}', "messages[0]"),
        ('{"messages": [{"role": "user", "content": "x"}]}', "no assistant message"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path: Path, bad_line: str, message: str) -> None:
    good = json.dumps({"instruction": "Add?", "response": "a + b"})
    path = _write_jsonl(tmp_path / "data.jsonl", [good, good, bad_line])
    with pytest.raises(StageError, match=r"data\.jsonl:3: ") as error:
        read_conversations(path)
    assert message in str(error.value)


def test_pairs_from_source_function_and_class() -> None:
    pairs = pairs_from_source(CODE, min_body_lines=2)
    by_first_line = {
        instruction.split("```python\n")[1].splitlines()[0]: (instruction, response)
        for instruction, response in pairs
    }
    assert set(by_first_line) == {"def add(a, b):", "class Counter:"}
    instruction, response = by_first_line["def add(a, b):"]
    assert '"""Add two numbers."""' in instruction and "total = a + b" not in instruction
    assert (
        response
        == '```python\ndef add(a, b):\n    """Add two numbers."""\n    total = a + b\n    return total\n```'
    )
    instruction, response = by_first_line["class Counter:"]
    assert "def bump" not in instruction and "def bump(self):" in response and "self.count = 0" in response
    assert pairs_from_source("def broken(:\n", 1) == []
    assert len(pairs_from_source(CODE, min_body_lines=3)) == 1  # the class's methods span 5 lines


def _write_split_ids(data_dir: Path, train_ids: list[str], val_ids: list[str]) -> None:
    data_dir.mkdir(parents=True)
    for split, ids in (("train", train_ids), ("val", val_ids)):
        split_paths(data_dir, split)["ids"].write_text(json.dumps(ids))


def _document(repo: str, path: str, content: str, lang: str = "python") -> dict:
    return make_document(repo, path, lang, content, license="mit", stars=1)


def _function(name: str) -> str:
    return f'def {name}(values):\n    """Sum {name}."""\n    total = sum(values)\n    return total\n'


def test_mined_pairs_come_only_from_training_repos_and_skip_humaneval(tmp_path: Path) -> None:
    humaneval = read_problems(humaneval_file())[0]
    docs = [
        _document("org/train", "a.py", _function("train_only")),
        _document("org/train", "b.py", _function("train_only")),  # the same pair again
        _document("org/train", "he.py", humaneval.prompt + (humaneval.gold or "")),
        _document("org/train", "c.js", _function("not_python"), lang="javascript"),
        _document("org/train", "d.py", _function("second_train")),
        _document("org/val", "a.py", _function("validation_doc")),
        # In train.ids.json, but its repo also has a validation document: held out with its repo.
        _document("org/val", "b.py", _function("validation_repo")),
        _document("org/other", "a.py", _function("not_in_any_split")),
    ]
    clean_dir = tmp_path / "clean"
    clean_dir.mkdir()
    write_shard(
        pa.Table.from_pylist(docs, schema=pa.schema(BASE_SCHEMA)), str(clean_dir / "part-00000.parquet")
    )
    train_ids = [doc["id"] for doc in docs if doc["repo"] == "org/train"] + [docs[6]["id"]]
    _write_split_ids(tmp_path / "tokenize", train_ids, [docs[5]["id"]])

    pairs, drops = mine_pairs(
        str(clean_dir), str(tmp_path / "tokenize"), MinedConfig(), DecontamConfig(), default_benchmarks()
    )
    assert sorted(pair.instruction.split("```python\n")[1].split("(")[0] for pair in pairs) == [
        "def second_train",
        "def train_only",
    ]
    assert {pair.source_id for pair in pairs} <= {docs[0]["id"], docs[1]["id"], docs[4]["id"]}
    text = "".join(pair.instruction + pair.response for pair in pairs)
    for name in ("validation_doc", "validation_repo", "not_in_any_split", "not_python"):
        assert name not in text
    assert drops["duplicate_pair"] == 1
    assert drops["benchmark_overlap"] >= 1
    capped, capped_drops = mine_pairs(
        str(clean_dir),
        str(tmp_path / "tokenize"),
        MinedConfig(max_pairs=1, min_body_lines=1),
        DecontamConfig(),
        default_benchmarks(),
    )
    assert capped == pairs[:1] and capped_drops["over_max_pairs"] == 1


def test_batches_are_indexed_by_step_and_cover_an_epoch(tokenizer) -> None:
    examples = [encode_conversation(pair_messages(f"q{k}", "a" * (k + 1)), tokenizer) for k in range(6)]
    source = SftBatches(examples, seed=7, pad_id=tokenizer.pad_token_id, max_len=64)
    first = [source.batch(step, 2, rank, 3) for step in range(1) for rank in range(3)]
    again = [source.batch(0, 2, rank, 3) for rank in range(3)]
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, again, strict=True))
    seen = {tuple(ids[ids != tokenizer.pad_token_id].tolist()) for batch in first for ids in batch[0]}
    assert seen == {tuple(example.tokens.tolist()) for example in examples}  # one epoch over 3 ranks


def test_stages_follow_each_other() -> None:
    schedule = StagedSchedule((0, 4), (Cosine(1.0, 0.1, 0, 4), Cosine(0.5, 0.05, 0, 2)))
    assert [schedule(step) for step in (0, 4)] == [1.0, 0.5]
    assert schedule(3) < 1.0 and schedule(6) == pytest.approx(0.05)

    class Source:
        def __init__(self, name: str) -> None:
            self.name = name

        def batch(self, step, micro_batch, rank, world_size):
            return self.name, step

    staged = StagedBatches((0, 8), (Source("a"), Source("b")))
    assert [staged.batch(step, 1, 0, 1) for step in (0, 7, 8, 9)] == [("a", 0), ("a", 7), ("b", 0), ("b", 1)]
    assert stage_steps(SftStageConfig(name="x", epochs=2.0), examples=10, examples_per_step=4) == 5
    assert stage_steps(SftStageConfig(name="x", steps=3), examples=10, examples_per_step=4) == 3


def test_config_rejects_ambiguous_stages() -> None:
    with pytest.raises(ValidationError, match="exactly one of epochs and steps"):
        SftStageConfig(name="x", epochs=1.0, steps=3)
    with pytest.raises(ValidationError, match="unique"):
        SftConfig(stages=[SftStageConfig(name="x", steps=3), SftStageConfig(name="x", steps=3)])
    assert [stage.name for stage in SftConfig().stages] == ["general", "code"]
