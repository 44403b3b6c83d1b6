"""RRTF's ranking: PanGu-Coder2's feedback levels from sandbox outcomes, the order of a problem's
responses, and how well a policy's likelihoods agree with that order.

Levels (higher is better): 0 does not compile (syntax error) < 1 runtime error (an exception, a timeout,
memory) < 2 some tests fail < 3 all tests pass. A response's score is its level, plus ``TEACHER_BONUS``
for a teacher's answer: at the same level, the teacher's answer ranks first (ties broken by teacher
preference); two policy samples of one level stay tied (no pair is trained between them).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

LEVELS = {"syntax": 0, "error": 1, "timeout": 1, "memory": 1, "failed": 2, "passed": 3}
LEVEL_NAMES = ("compile_error", "runtime_error", "tests_failed", "tests_passed")
TEACHER_BONUS = 0.5


def feedback_level(kind: str) -> int:
    """The feedback level of a sandbox outcome (``passed``, ``failed``, ``error``...)."""
    try:
        return LEVELS[kind]
    except KeyError:
        raise ValueError(
            f"no feedback level for sandbox outcome {kind!r} (levels: {sorted(LEVELS)})"
        ) from None


@dataclass(frozen=True)
class Response:
    """One answer to a problem: its text (what is trained on), who wrote it and how it fared."""

    text: str
    source: str  # "policy" or "teacher"
    kind: str

    @property
    def level(self) -> int:
        """Its feedback level."""
        return feedback_level(self.kind)

    @property
    def score(self) -> float:
        """Its rank score: the level, a teacher's answer first among equals."""
        return self.level + (TEACHER_BONUS if self.source == "teacher" else 0.0)


def ranked(responses: Sequence[Response]) -> list[Response]:
    """``responses`` best first (stable: equal scores keep their order)."""
    return sorted(responses, key=lambda response: -response.score)


def ranked_pairs(logprobs: Sequence[float], scores: Sequence[float]) -> Iterator[tuple[float, float]]:
    """``(p_better, p_worse)`` for every pair of responses whose scores differ."""
    for i, (logprob_i, score_i) in enumerate(zip(logprobs, scores, strict=True)):
        for logprob_j, score_j in zip(logprobs[i + 1 :], scores[i + 1 :], strict=True):
            if score_i > score_j:
                yield logprob_i, logprob_j
            elif score_j > score_i:
                yield logprob_j, logprob_i


def ranking_pairs(logprobs: Sequence[float], scores: Sequence[float]) -> tuple[int, int]:
    """``(agreeing, pairs)``: of the pairs of responses whose scores differ, those where the
    better-scored response is also the more likely one (ties in likelihood do not agree)."""
    pairs = list(ranked_pairs(logprobs, scores))
    return sum(better > worse for better, worse in pairs), len(pairs)


def hinge(logprobs: Sequence[float], scores: Sequence[float]) -> float:
    """RRHF's ranking loss of one problem: ``max(0, p_worse - p_better)`` summed over its pairs."""
    return sum((max(0.0, worse - better) for better, worse in ranked_pairs(logprobs, scores)), 0.0)
