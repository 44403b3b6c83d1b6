"""StarCoder fill-in-the-middle: exact PSM/SPM token layout, rates, and undoing it restores the document."""

from __future__ import annotations

import numpy as np
import pytest

from components.tokens.fim import apply_fim, apply_fim_batch, undo_fim
from tests.test_tokenize import AWKWARD_TEXTS, corpus, tiny_codec

DOCUMENT = 'def greet(name):\n\t"""Say hello — in Unicode ☕ 🎉."""\r\n    return f"hello {name}"  \n'


def expected_parts(text: str, seed: int) -> tuple[str, str, str, int]:
    """Replay Megatron's draws (FIM yes/no, two boundaries, SPM yes/no) on a fresh generator."""
    rng = np.random.default_rng(seed)
    assert rng.binomial(1, 1.0) == 1
    start, end = sorted(rng.integers(0, len(text) + 1, size=2))
    return text[:start], text[start:end], text[end:], int(rng.binomial(1, 0.5))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("layout", ["psm", "spm"])
def test_fim_layout_is_exact(seed: int, layout: str) -> None:
    codec = tiny_codec()
    special = codec.special
    tokens = codec.encode(DOCUMENT)
    spm_rate = 1.0 if layout == "spm" else 0.0
    result = apply_fim(tokens, codec, np.random.default_rng(seed), fim_rate=1.0, spm_rate=spm_rate)
    prefix, middle, suffix = (codec.encode(part) for part in expected_parts(DOCUMENT, seed)[:3])
    if layout == "psm":  # <fim_prefix> prefix <fim_suffix> suffix <fim_middle> middle
        expected = [special.fim_prefix, *prefix, special.fim_suffix, *suffix, special.fim_middle, *middle]
    else:  # bigcode Megatron SPM: <fim_prefix><fim_suffix> suffix <fim_middle> prefix middle
        expected = [special.fim_prefix, special.fim_suffix, *suffix, special.fim_middle, *prefix, *middle]
    assert result.tolist() == expected
    assert result.dtype == np.int64


def test_rate_zero_leaves_the_document_alone() -> None:
    codec = tiny_codec()
    tokens = codec.encode(DOCUMENT)
    assert apply_fim(tokens, codec, np.random.default_rng(5), fim_rate=0.0, spm_rate=0.5) is tokens


def test_undoing_fim_restores_every_document() -> None:
    codec = tiny_codec()
    texts = [*AWKWARD_TEXTS, DOCUMENT, *list(corpus().values())[:10]]
    modes = set()
    for seed in range(6):
        for text in texts:
            tokens = codec.encode(text)
            fim = apply_fim(
                tokens, codec, np.random.default_rng([seed, len(text)]), fim_rate=1.0, spm_rate=0.5
            )
            sentinels = fim[
                np.isin(fim, [codec.special.fim_prefix, codec.special.fim_suffix, codec.special.fim_middle])
            ]
            assert sorted(sentinels.tolist()) == sorted(
                [codec.special.fim_prefix, codec.special.fim_suffix, codec.special.fim_middle]
            )
            modes.add(fim[1] == codec.special.fim_suffix)
            restored = undo_fim(fim, codec.special)
            assert codec.decode(restored) == text
            assert not np.isin(restored, list(range(10))).any()
    assert modes == {True, False}  # both orders were drawn
    plain = codec.encode(DOCUMENT)
    assert undo_fim(plain, codec.special).tolist() == plain.tolist()


def test_rates_are_respected_over_many_documents() -> None:
    codec = tiny_codec()
    documents = [codec.encode(f"value_{i} = {i} * 2\n") for i in range(600)]
    rngs = [np.random.default_rng([42, i]) for i in range(len(documents))]
    transformed = apply_fim_batch(documents, codec, rngs, fim_rate=0.5, spm_rate=0.25)
    assert 0.42 < len(transformed) / len(documents) < 0.58
    spm = sum(tokens[1] == codec.special.fim_suffix for tokens in transformed.values())
    assert 0.15 < spm / len(transformed) < 0.35
    # The batch gives each document what a single call with the same generator gives.
    for position in list(transformed)[:20]:
        single = apply_fim(documents[position], codec, np.random.default_rng([42, position]), 0.5, 0.25)
        assert single.tolist() == transformed[position].tolist()
