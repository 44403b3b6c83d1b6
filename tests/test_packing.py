"""TokenDataset, the trainer's contract: packing, epochs, FIM per document, ranks, subsets."""

from __future__ import annotations

import itertools
import json
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from components.tokens.dataset import TokenDataset, read_index
from components.tokens.fim import undo_fim
from components.tokens.packing import metadata_length
from components.tokens.tokenizer import TokenCodec
from tests.test_tokenize import corpus, tokenize, write_clean_shards

SEQ_LEN = 47


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tokenize output of a small corpus: 10 repos, about half the training documents with metadata."""
    root = tmp_path_factory.mktemp("packing")
    clean = write_clean_shards(root / "clean", corpus(repos=10, files=3))
    tokenize(clean, root / "tokenize", val_fraction=0.3, metadata_rate=0.5)
    return root / "tokenize"


def stored_documents(directory: Path, split: str) -> list[tuple[int, ...]]:
    """Every document of a split as stored (ending with EOS), in file order."""
    tokens = np.fromfile(directory / f"{split}.bin", dtype=np.uint16)
    starts = np.load(directory / f"{split}.docs.npy")
    ends = np.append(starts[1:], len(tokens))
    return [tuple(int(t) for t in tokens[s:e]) for s, e in zip(starts, ends, strict=True)]


def split_at_eos(stream: np.ndarray, eos: int) -> list[tuple[int, ...]]:
    """Cut a token stream after every EOS; the trailing piece (no EOS) is left out."""
    cuts = np.flatnonzero(stream == eos) + 1
    bounds = np.concatenate([[0], cuts])
    return [tuple(int(t) for t in stream[a:b]) for a, b in itertools.pairwise(bounds)]


def epoch_stream(dataset: TokenDataset, epoch: int = 0) -> np.ndarray:
    """One epoch's sequences, concatenated."""
    first = epoch * len(dataset)
    return np.concatenate([dataset.sequence(first + i) for i in range(len(dataset))])


def test_one_epoch_holds_every_document_once_with_eos_between(packed: Path) -> None:
    dataset = TokenDataset(packed, "train", SEQ_LEN, seed=3)
    documents = stored_documents(packed, "train")
    total = sum(len(d) for d in documents)
    assert dataset.num_tokens == total == read_index(packed)["splits"]["train"]["tokens"]
    assert len(dataset) == total // (SEQ_LEN + 1)

    stream = epoch_stream(dataset)
    assert stream.dtype == np.int64 and len(stream) == len(dataset) * (SEQ_LEN + 1)
    # The stream is the documents, each whole and each once, in a shuffled order, cut where the last
    # full window ends (the dropped tail is shorter than one window).
    pieces = split_at_eos(stream, eos=0)
    tail = tuple(int(t) for t in stream[sum(len(p) for p in pieces) :])
    assert Counter(pieces) <= Counter(documents)  # nothing duplicated or invented
    missing = list((Counter(documents) - Counter(pieces)).elements())
    assert total - len(stream) < SEQ_LEN + 1  # only the last partial window is dropped ...
    assert not tail or any(doc[: len(tail)] == tail for doc in missing)  # ... starting inside one document
    assert sum(len(d) for d in missing) == total - len(stream) + len(tail)
    assert pieces != documents[: len(pieces)]  # shuffled


def test_validation_split_is_the_file_in_order(packed: Path) -> None:
    dataset = TokenDataset(packed, "val", SEQ_LEN, seed=3, fim_rate=1.0)  # val: never FIM, never shuffled
    tokens = np.fromfile(packed / "val.bin", dtype=np.uint16).astype(np.int64)
    assert np.array_equal(epoch_stream(dataset), tokens[: len(dataset) * (SEQ_LEN + 1)])
    assert np.array_equal(epoch_stream(dataset, epoch=1), epoch_stream(dataset, epoch=0))
    index = read_index(packed)["splits"]["val"]
    assert (dataset.num_tokens, dataset.num_bytes) == (index["tokens"], index["bytes"])


def test_sequences_are_deterministic_and_independent_of_access_order(packed: Path) -> None:
    first = TokenDataset(packed, "train", SEQ_LEN, seed=11, fim_rate=0.5)
    second = TokenDataset(packed, "train", SEQ_LEN, seed=11, fim_rate=0.5)
    indices = list(range(0, 3 * len(first), 3))  # three epochs
    forward = [first.sequence(i) for i in indices]
    backward = [second.sequence(i) for i in reversed(indices)][::-1]
    for a, b in zip(forward, backward, strict=True):
        assert a.shape == (SEQ_LEN + 1,) and np.array_equal(a, b)
    # Other epochs and other seeds give other orders.
    assert not np.array_equal(epoch_stream(first, 0), epoch_stream(first, 1))
    other_seed = TokenDataset(packed, "train", SEQ_LEN, seed=12, fim_rate=0.5)
    assert not np.array_equal(epoch_stream(first), epoch_stream(other_seed))


def test_fim_is_applied_per_document_and_undoes_to_the_documents(packed: Path) -> None:
    codec = TokenCodec.load(packed)
    special = codec.special
    documents = stored_documents(packed, "train")
    originals = Counter(codec.decode(d) for d in documents)
    dataset = TokenDataset(packed, "train", SEQ_LEN, seed=5, fim_rate=1.0, fim_spm_rate=0.5)
    pieces = split_at_eos(epoch_stream(dataset), special.eos)
    assert len(pieces) >= len(documents) - 2
    restored = []
    for piece in pieces:
        tokens = np.array(piece)
        prefix = metadata_length(tokens, special, codec.newline_id)
        assert tokens[prefix] == special.fim_prefix  # every document got FIM, after its metadata
        body = undo_fim(tokens[prefix:-1], special)
        restored.append(codec.decode(np.concatenate([tokens[:prefix], body, tokens[-1:]])))
    assert Counter(restored) <= originals
    with_metadata = sum(1 for piece in pieces if piece[0] == special.reponame)
    assert 0 < with_metadata < len(pieces)


def test_batch_gives_disjoint_sequences_to_ranks(packed: Path) -> None:
    dataset = TokenDataset(packed, "train", SEQ_LEN, seed=3)
    micro_batch, world_size = 3, 2
    seen: dict[int, set[int]] = {0: set(), 1: set()}
    for step in range(4):
        for rank in range(world_size):
            batch = dataset.batch(step, micro_batch, rank=rank, world_size=world_size)
            assert batch.dtype == torch.int64 and batch.shape == (micro_batch, SEQ_LEN + 1)
            first = (step * world_size + rank) * micro_batch
            for j in range(micro_batch):
                index = dataset.training_index(first + j)
                assert np.array_equal(batch[j].numpy(), dataset.sequence(index))
                seen[rank].add(index)
    assert not seen[0] & seen[1]
    # One epoch of training visits every window once, in a shuffled order.
    epoch = [dataset.training_index(i) for i in range(len(dataset))]
    assert sorted(epoch) == list(range(len(dataset))) and epoch != sorted(epoch)
    assert all(dataset.training_index(len(dataset) + i) >= len(dataset) for i in range(len(dataset)))
    # A resumed run (new instance) at step 2 sees the same batch.
    resumed = TokenDataset(packed, "train", SEQ_LEN, seed=3)
    assert torch.equal(
        resumed.batch(2, micro_batch, 1, world_size), dataset.batch(2, micro_batch, 1, world_size)
    )


def test_doc_ids_restrict_the_dataset(packed: Path) -> None:
    ids = json.loads((packed / "train.ids.json").read_text())
    documents = stored_documents(packed, "train")
    doc_bytes = np.load(packed / "train.doc_bytes.npy")
    chosen = [1, 4, 7, 8]
    dataset = TokenDataset(packed, "train", 15, seed=1, doc_ids=[ids[i] for i in chosen] + ["not-a-doc"])
    assert dataset.num_bytes == int(doc_bytes[chosen].sum())
    assert dataset.num_tokens == sum(len(documents[i]) for i in chosen)
    pieces = split_at_eos(epoch_stream(dataset), eos=0)
    assert Counter(pieces) <= Counter(documents[i] for i in chosen)
    with pytest.raises(ValueError, match="none of the 1 doc_ids"):
        TokenDataset(packed, "train", 15, seed=1, doc_ids=["not-a-doc"])


def test_bad_arguments_are_named(packed: Path) -> None:
    with pytest.raises(ValueError, match="fewer than one sequence"):
        TokenDataset(packed, "val", 10**7, seed=1)
    with pytest.raises(ValueError, match="split must be one of"):
        TokenDataset(packed, "test", 16, seed=1)
    with pytest.raises(FileNotFoundError, match="run the tokenize stage"):
        TokenDataset(packed.parent, "train", 16, seed=1)


def test_dataset_pickles_without_its_tokens(packed: Path) -> None:
    dataset = TokenDataset(packed, "train", SEQ_LEN, seed=9, fim_rate=0.5)
    expected = dataset.sequence(len(dataset) + 2)
    restored = pickle.loads(pickle.dumps(dataset))
    assert isinstance(restored.tokens, np.memmap) and restored.tokens.mode == "r"  # reopened, not copied
    assert np.array_equal(restored.sequence(len(dataset) + 2), expected)
