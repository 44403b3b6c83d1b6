"""MinHash, LSH and clustering building blocks of the dedup stage, on real text and random graphs."""

from __future__ import annotations

import random

import numpy as np
import pytest

from components.dedup.clusters import bucket_pairs, connected_components, unique_pairs
from components.dedup.minhash import (
    MinHasher,
    band_hashes,
    document_shingles,
    estimated_jaccard,
    exact_keys,
    jaccard,
    optimal_bands_rows,
    shingle_sets,
    tokenize,
)

WORDS = [f"w{i}" for i in range(5000)]


def text_pair(rng: random.Random, changes: int, n_words: int = 400) -> tuple[str, str]:
    """A random text and a copy with ``changes`` words replaced at random positions."""
    words = [rng.choice(WORDS) for _ in range(n_words)]
    changed = list(words)
    for position in rng.sample(range(n_words), changes):
        changed[position] = f"new{position}"
    return " ".join(words), " ".join(changed)


def test_bands_and_rows_for_0_7_and_256_permutations() -> None:
    assert optimal_bands_rows(0.7, 256) == (25, 10)


@pytest.mark.parametrize(("threshold", "num_perm"), [(0.7, 256), (0.8, 128), (0.5, 64), (0.9, 256)])
def test_bands_and_rows_match_datasketch(threshold: float, num_perm: int) -> None:
    lsh = pytest.importorskip("datasketch.lsh")
    assert optimal_bands_rows(threshold, num_perm) == lsh._optimal_param(threshold, num_perm, 0.5, 0.5)


def test_estimated_jaccard_is_close_to_true_jaccard() -> None:
    rng = random.Random(5)
    hasher = MinHasher(num_perm=256, seed=42)
    errors = []
    for changes in [0, 2, 5, 10, 20, 40, 80, 150, 400]:
        texts = text_pair(rng, changes)
        shingles, offsets = shingle_sets(texts, ngram=5, seed=42)
        first, second = (shingles[offsets[i] : offsets[i + 1]] for i in range(2))
        signatures = hasher.signatures(shingles, offsets)
        errors.append(estimated_jaccard(signatures[:, 0], signatures[:, 1]) - jaccard(first, second))
    errors = np.abs(errors)
    # Standard error at 256 permutations is at most 0.031: allow 4 of them, and a small mean.
    assert errors.max() < 0.125 and errors.mean() < 0.04
    assert errors[0] == 0  # identical texts: identical signatures


def test_signatures_do_not_depend_on_the_other_documents_of_the_shard() -> None:
    rng = random.Random(1)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randrange(1, 900))) for _ in range(40)]
    hasher = MinHasher(num_perm=256, seed=3)
    together = hasher.signatures(*shingle_sets(texts, 5, seed=3))  # > 8192 shingles: several blocks
    alone = np.concatenate([hasher.signatures(*shingle_sets([text], 5, seed=3)) for text in texts], axis=1)
    assert np.array_equal(together, alone)
    assert not np.array_equal(
        together, MinHasher(num_perm=256, seed=4).signatures(*shingle_sets(texts, 5, 3))
    )


def test_short_texts_have_no_shingles_and_a_blank_signature() -> None:
    assert len(document_shingles("only four words here", 5, seed=0)) == 0
    assert len(document_shingles("now there are five words", 5, seed=0)) == 1
    signatures = MinHasher(16, 0).signatures(*shingle_sets(["a b", "a b c d e f"], 5, seed=0))
    assert (signatures[:, 0] == np.iinfo(np.uint32).max).all() and (signatures[:, 1] < 2**32 - 1).any()


def test_tokens_are_words_of_letters_digits_underscores_and_non_ascii() -> None:
    assert tokenize("def foo_bar(x1, 'é'):\n\treturn x1+2") == [
        b"def",
        b"foo_bar",
        b"x1",
        "é".encode(),
        b"return",
        b"x1",
        b"2",
    ]


def test_exact_keys_ignore_whitespace_only() -> None:
    keys = exact_keys(["a  b\n\tc\n", " a b c", "a b  d", "abc"])
    assert (keys[0] == keys[1]).all()
    assert len({tuple(key) for key in keys}) == 3


def test_band_hashes_equal_exactly_for_equal_columns() -> None:
    rows = np.array([[1, 1, 1, 2], [5, 5, 6, 5]], dtype=np.uint32)
    hashes = band_hashes(rows)
    assert hashes[0] == hashes[1]
    assert len(set(hashes.tolist())) == 3


def test_bucket_pairs_small_buckets_give_all_pairs_large_ones_a_star() -> None:
    keys = np.array([7, 3, 7, 7, 3, 9, 5, 5, 5, 5, 5], dtype=np.uint64)
    units = np.array([10, 4, 2, 8, 1, 6, 20, 21, 22, 23, 24])
    small = {tuple(pair) for pair in bucket_pairs(keys, units, all_pairs_max_bucket=4).tolist()}
    assert small == {(2, 8), (2, 10), (8, 10), (1, 4)} | {(20, 21), (20, 22), (20, 23), (20, 24)}
    everything = bucket_pairs(keys, units, all_pairs_max_bucket=5)
    assert len(everything) == 3 + 1 + 10
    two_column_keys = np.array([[1, 2], [1, 3], [1, 2]], dtype=np.uint64)
    assert bucket_pairs(two_column_keys, np.array([5, 6, 7]), 1).tolist() == [[5, 7]]


def naive_components(n: int, pairs: list[tuple[int, int]]) -> list[int]:
    """Reference union-find with dicts: the smallest member of each component."""
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            x = parent[x]
        return x

    for u, v in pairs:
        ru, rv = find(u), find(v)
        parent[max(ru, rv)] = min(ru, rv)
    return [find(x) for x in range(n)]


@pytest.mark.parametrize("seed", range(5))
def test_connected_components_match_a_reference_union_find(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 500
    pairs = np.sort(rng.integers(0, n, size=(300, 2)), axis=1)
    pairs = unique_pairs(pairs[pairs[:, 0] != pairs[:, 1]])
    expected = naive_components(n, [tuple(pair) for pair in pairs.tolist()])
    assert connected_components(n, pairs).tolist() == expected


def test_a_long_chain_is_one_component_rooted_at_its_smallest_unit() -> None:
    order = np.random.default_rng(0).permutation(1000)
    pairs = np.sort(np.stack([order[:-1], order[1:]], axis=1), axis=1)
    assert (connected_components(1000, pairs) == 0).all()
