"""The byte-level BPE tokenizer: special tokens, training, the Hugging Face wrapper and the text codec.

- Byte level: the ByteLevel pre-tokenizer (GPT-2's regex, ``add_prefix_space=False``) maps every byte to
  one of 256 alphabet symbols, all of which are in the vocabulary, and there is no normalizer, so any text
  round-trips byte for byte (tabs, CRLF, trailing spaces, emoji, control characters).
- Special tokens (fixed ids 0-9): ``<|endoftext|>`` (EOS, also BOS: none is prepended), the FIM tokens
  ``<fim_prefix> <fim_middle> <fim_suffix> <fim_pad>``, StarCoder's metadata tokens ``<reponame>
  <filename> <gh_stars>``, and ChatML's ``<|im_start|> <|im_end|>`` for instruction tuning (the saved
  tokenizer carries a ChatML chat template).
- Padding uses ``<fim_pad>``, not EOS: collators mask padding out of the labels, and with pad == EOS the
  model would never be trained to emit EOS.
- StarCoder's format markers follow (ids 10-20, components/formats.py): ``<jupyter_start>`` …
  ``<issue_closed>``.
- Document text is encoded by :class:`TokenCodec`, which treats special-token strings inside code (a file
  that mentions ``<|endoftext|>``) as plain text; only the pipeline inserts special ids, and a formatted
  document (a structured notebook, a commit, an issue) gets the ids of its own format's markers. The saved
  Hugging Face tokenizer does parse them all, as prompts and chat templates need.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from components.formats import ALL_FORMAT_TOKENS, FORMAT_TOKENS

if TYPE_CHECKING:  # transformers takes seconds to import: only where the wrapper is needed
    from transformers import PreTrainedTokenizerFast

EOS = "<|endoftext|>"
FIM_PREFIX = "<fim_prefix>"
FIM_MIDDLE = "<fim_middle>"
FIM_SUFFIX = "<fim_suffix>"
FIM_PAD = "<fim_pad>"
REPONAME = "<reponame>"
FILENAME = "<filename>"
GH_STARS = "<gh_stars>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"

#: In id order: ``<|endoftext|>`` is 0, ``<|im_end|>`` is 9.
SPECIAL_TOKENS = (
    EOS,
    FIM_PREFIX,
    FIM_MIDDLE,
    FIM_SUFFIX,
    FIM_PAD,
    REPONAME,
    FILENAME,
    GH_STARS,
    IM_START,
    IM_END,
)

#: ChatML, as OpenCoder's instruction models use; SFT renders conversations with it.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

TOKENIZER_DIR = "tokenizer"
#: Texts per ``encode_batch_fast`` call: enough to keep the Rust threads busy, few enough to bound memory.
ENCODE_CHUNK = 1024


@dataclass(frozen=True)
class SpecialIds:
    """Ids of the special tokens in a trained tokenizer."""

    eos: int
    fim_prefix: int
    fim_middle: int
    fim_suffix: int
    fim_pad: int
    reponame: int
    filename: int
    gh_stars: int
    im_start: int
    im_end: int

    @classmethod
    def of(cls, tokenizer: Tokenizer) -> SpecialIds:
        """Look the special tokens up in ``tokenizer``; an error names any that is missing."""
        found = {token: tokenizer.token_to_id(token) for token in SPECIAL_TOKENS}
        missing = [token for token, token_id in found.items() if token_id is None]
        if missing:
            raise ValueError(f"tokenizer lacks special token(s) {missing}")
        return cls(*(int(token_id) for token_id in found.values() if token_id is not None))

    def by_token(self) -> dict[str, int]:
        """``{"<|endoftext|>": 0, ...}``."""
        return dict(zip(SPECIAL_TOKENS, asdict(self).values(), strict=True))


def train_tokenizer(texts: Iterable[str], vocab_size: int, min_frequency: int) -> Tokenizer:
    """Train a byte-level BPE tokenizer on ``texts`` (deterministic: same texts, same tokenizer.json)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[*SPECIAL_TOKENS, *ALL_FORMAT_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def to_transformers(tokenizer: Tokenizer) -> PreTrainedTokenizerFast:
    """Wrap a trained tokenizer for ``save_pretrained``/``AutoTokenizer`` (EOS, BOS, pad, chat template)."""
    from transformers import PreTrainedTokenizerFast

    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(tokenizer.to_str()),
        eos_token=EOS,
        bos_token=EOS,
        pad_token=FIM_PAD,
        unk_token=None,
        additional_special_tokens=[
            token for token in (*SPECIAL_TOKENS, *ALL_FORMAT_TOKENS) if token not in (EOS, FIM_PAD)
        ],
        clean_up_tokenization_spaces=False,
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def tokenizer_dir(directory: str | Path) -> Path:
    """The tokenizer folder of a tokenize output (``<dir>/tokenizer``), or ``directory`` if it is one."""
    directory = Path(directory)
    return directory if (directory / "tokenizer.json").exists() else directory / TOKENIZER_DIR


def load_tokenizer(directory: str | Path) -> PreTrainedTokenizerFast:
    """The Hugging Face tokenizer of a tokenize output directory (or of its ``tokenizer`` folder)."""
    from transformers import AutoTokenizer

    tokenizer: Any = AutoTokenizer.from_pretrained(str(tokenizer_dir(directory)))
    return tokenizer


class TokenCodec:
    """Encodes document text to ids (special-token strings stay plain text, except a formatted document's
    own markers) and decodes ids to text."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = Tokenizer.from_str(tokenizer.to_str())
        self.tokenizer.encode_special_tokens = True
        self.special = SpecialIds.of(self.tokenizer)
        #: Per format ``lang``: its markers' ids (a tokenizer trained before the formats has none).
        found = {
            token: self.tokenizer.token_to_id(token) for tokens in FORMAT_TOKENS.values() for token in tokens
        }
        self.format_ids = {
            lang: {token: token_id for token in tokens if (token_id := found[token]) is not None}
            for lang, tokens in FORMAT_TOKENS.items()
            if all(found[token] is not None for token in tokens)
        }
        self._format_splitters = {
            lang: re.compile("(" + "|".join(re.escape(token) for token in tokens) + ")")
            for lang, tokens in FORMAT_TOKENS.items()
        }
        (self.newline_id,) = self.encode("\n")

    @classmethod
    def load(cls, directory: str | Path) -> TokenCodec:
        """The codec of a tokenize output directory (or of its ``tokenizer`` folder)."""
        return cls(Tokenizer.from_file(str(tokenizer_dir(directory) / "tokenizer.json")))

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included."""
        return self.tokenizer.get_vocab_size()

    def encode(self, text: str) -> np.ndarray:
        """Token ids (int64) of ``text``."""
        return np.asarray(self.tokenizer.encode(text, add_special_tokens=False).ids, dtype=np.int64)

    def encode_batch(
        self, texts: Sequence[str], langs: Sequence[str | None] | None = None
    ) -> list[np.ndarray]:
        """Token ids of many texts; a text whose ``lang`` is a format's gets its markers as their ids."""
        if langs is None or not any(lang in FORMAT_TOKENS for lang in langs):
            return self._encode_plain(texts)
        lacking = sorted({lang for lang in langs if lang in FORMAT_TOKENS and lang not in self.format_ids})
        if lacking:
            raise ValueError(
                f"tokenizer lacks the format tokens of {lacking}: retrain it (dvc repro tokenize)"
            )
        pieces: list[list[str]] = []
        for text, lang in zip(texts, langs, strict=True):
            splitter = self._format_splitters.get(lang) if lang else None
            pieces.append(splitter.split(text) if splitter else [text])
        # split() alternates text, marker, text, …: markers sit at odd positions.
        plain = iter(self._encode_plain([piece for parts in pieces for piece in parts[::2]]))
        encoded = []
        for parts, lang in zip(pieces, langs, strict=True):
            ids = self.format_ids.get(lang or "", {})
            chunks = [
                np.array([ids[part]], dtype=np.int64) if index % 2 else next(plain)
                for index, part in enumerate(parts)
            ]
            encoded.append(np.concatenate(chunks))
        return encoded

    def format_of(self, tokens: np.ndarray) -> str | None:
        """The format ``lang`` whose marker ids ``tokens`` carry (``None``: a plain document)."""
        present = set(np.asarray(tokens).tolist())
        for lang, ids in self.format_ids.items():
            if present.intersection(ids.values()):
                return lang
        return None

    def _encode_plain(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Token ids of many texts (Rust threads; in chunks, so memory stays bounded)."""
        encoded: list[np.ndarray] = []
        for start in range(0, len(texts), ENCODE_CHUNK):
            chunk = list(texts[start : start + ENCODE_CHUNK])
            encodings = self.tokenizer.encode_batch_fast(chunk, add_special_tokens=False)
            encoded.extend(np.asarray(encoding.ids, dtype=np.int64) for encoding in encodings)
        return encoded

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text of ``ids`` (special tokens written out)."""
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)

    def decode_batch(self, sequences: Sequence[Sequence[int] | np.ndarray]) -> list[str]:
        """Texts of many id sequences at once."""
        lists = [np.asarray(ids, dtype=np.int64).tolist() for ids in sequences]
        return self.tokenizer.decode_batch(lists, skip_special_tokens=False)
