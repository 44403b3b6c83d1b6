"""Fill-in-the-middle (StarCoder): turn a document into prefix/suffix/middle order, at character level.

This follows ``permute`` in bigcode-project/Megatron-LM (``megatron/data/gpt_dataset.py``), called there
with ``truncate_or_pad=False``, draw for draw on the document's own generator:

1. ``binomial(1, fim_rate)``: leave the document as it is on 0.
2. Decode the tokens to text; ``integers(0, len(text) + 1, size=2)``, sorted, are two character
   boundaries (either may be 0 or ``len(text)``, and they may be equal), so
   ``prefix = text[:a]``, ``middle = text[a:b]``, ``suffix = text[b:]``; each part is re-encoded
   (byte-level BPE round-trips any text).
3. ``binomial(1, fim_spm_rate)`` picks the order:

   - PSM: ``<fim_prefix> prefix <fim_suffix> suffix <fim_middle> middle``
   - SPM (Megatron's variant, "SPM variant 2" of the FIM paper):
     ``<fim_prefix> <fim_suffix> suffix <fim_middle> prefix middle``

The caller keeps the document's ``<|endoftext|>`` after the result, and any metadata prefix before it.
Megatron draws from ``RandomState.randint``; here a ``numpy.random.Generator`` is used with the same
semantics (uniform, high exclusive).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from components.tokens.tokenizer import SpecialIds, TokenCodec


def apply_fim_batch(
    documents: Sequence[np.ndarray],
    codec: TokenCodec,
    rngs: Sequence[np.random.Generator],
    fim_rate: float,
    spm_rate: float,
) -> dict[int, np.ndarray]:
    """FIM-transform many documents at once, each with its own generator (batched decode/encode).

    Returns the transformed documents by position; documents not drawn for FIM are left out.
    """
    chosen = [position for position, rng in enumerate(rngs) if rng.binomial(1, fim_rate)]
    texts = codec.decode_batch([documents[position] for position in chosen])
    parts: list[str] = []
    langs: list[str | None] = []
    use_spm: list[bool] = []
    for position, text in zip(chosen, texts, strict=True):
        rng = rngs[position]
        start, end = sorted(int(point) for point in rng.integers(0, len(text) + 1, size=2))
        parts += [text[:start], text[start:end], text[end:]]
        langs += [codec.format_of(documents[position])] * 3  # a formatted document keeps its markers
        use_spm.append(bool(rng.binomial(1, spm_rate)))
    encoded = codec.encode_batch(parts, langs)
    special = codec.special
    transformed = {}
    for k, position in enumerate(chosen):
        prefix, middle, suffix = encoded[3 * k : 3 * k + 3]
        if use_spm[k]:
            pieces = [[special.fim_prefix, special.fim_suffix], suffix, [special.fim_middle], prefix, middle]
        else:
            pieces = [
                [special.fim_prefix],
                prefix,
                [special.fim_suffix],
                suffix,
                [special.fim_middle],
                middle,
            ]
        transformed[position] = np.concatenate([np.asarray(piece, dtype=np.int64) for piece in pieces])
    return transformed


def apply_fim(
    tokens: np.ndarray, codec: TokenCodec, rng: np.random.Generator, fim_rate: float, spm_rate: float
) -> np.ndarray:
    """FIM-transform one document's tokens (without its EOS) with probability ``fim_rate``."""
    return apply_fim_batch([tokens], codec, [rng], fim_rate, spm_rate).get(0, tokens)


def undo_fim(tokens: np.ndarray, special: SpecialIds) -> np.ndarray:
    """Remove the FIM tokens and put the parts back in document order (prefix, middle, suffix).

    Decoding the result gives the original text (the parts' tokens may differ from the original
    tokenization at the two cut points). Tokens that do not start with ``<fim_prefix>`` are returned as-is.
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    if len(tokens) == 0 or tokens[0] != special.fim_prefix:
        return tokens
    suffix_at = int(np.flatnonzero(tokens == special.fim_suffix)[0])
    middle_at = int(np.flatnonzero(tokens == special.fim_middle)[0])
    suffix = tokens[suffix_at + 1 : middle_at]
    after_middle = tokens[middle_at + 1 :]
    # PSM: prefix sits between <fim_prefix> and <fim_suffix>; SPM: it leads the part after <fim_middle>
    # (with an empty prefix both orders coincide).
    prefix = tokens[1:suffix_at]
    return np.concatenate([prefix, after_middle, suffix])
