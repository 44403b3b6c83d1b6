"""RRTF's parts: feedback levels from real sandbox outcomes, the order of responses, and RRHF's loss
against hand-computed values."""

from __future__ import annotations

import math
from itertools import pairwise

import pytest
import torch

from components.align import probe_logprobs, ranked_groups
from components.align.feedback import Response, feedback_level, hinge, ranked, ranking_pairs
from components.align.responses import reference_response, score
from components.benchmarks import parse_problem
from components.params.evaluate import SandboxLimits
from components.problems.doctests import doctest_problems
from components.train.losses import RankedBatch, RankingLoss, rrhf_terms

SOURCE = '''def halve(x):
    """Half of x.

    >>> halve(4)
    2.0
    >>> halve(3)
    1.5
    """
    return x / 2
'''


def test_feedback_levels_for_syntax_error_exception_partial_and_full_pass() -> None:
    mined = doctest_problems(SOURCE, "repo/halve.py")[0][0]
    problem = parse_problem(mined.record({}), "humaneval", "problems", "halve")
    answers = [
        "    return x /\n",  # does not compile
        "    return undefined_name\n",  # raises
        "    return 2.0 if x == 4 else 0\n",  # one of two tests holds
        "    return x / 2\n",  # all hold
    ]
    responses = score([problem], [answers], [["policy"] * 4], False, SandboxLimits())[0]
    assert [response.kind for response in responses] == ["syntax", "error", "failed", "passed"]
    assert [response.level for response in responses] == [0, 1, 2, 3]
    assert feedback_level("timeout") == 1 and feedback_level("memory") == 1
    with pytest.raises(ValueError, match="skipped"):
        feedback_level("skipped")


def test_ranking_puts_the_teacher_first_among_equals_and_keeps_policy_ties() -> None:
    responses = [
        Response("a", "policy", "failed"),
        Response("b", "policy", "passed"),
        Response("c", "teacher", "failed"),
        Response("d", "policy", "failed"),
    ]
    assert [response.text for response in ranked(responses)] == ["b", "c", "a", "d"]
    scores = [response.score for response in ranked(responses)]
    assert scores == [3.0, 2.5, 2.0, 2.0]
    # a and d tie: of the 6 pairs, 5 count; likelihoods in the reverse order agree with none of them
    assert ranking_pairs([-4.0, -3.0, -2.0, -1.0], scores) == (0, 5)
    assert ranking_pairs([-1.0, -2.0, -3.0, -3.5], scores) == (5, 5)


def test_rrhf_loss_is_zero_when_likelihoods_follow_the_tests_and_hand_computed_otherwise() -> None:
    groups = torch.tensor([0, 0, 0, 1, 1])
    scores = torch.tensor([3.0, 2.0, 0.0, 3.0, 1.0])
    ordered = torch.tensor([-0.5, -1.0, -2.0, -0.2, -0.9])
    hinge_sum, sft_sum = rrhf_terms(ordered, groups, scores)
    assert hinge_sum.item() == 0.0
    assert sft_sum.item() == pytest.approx(0.5 + 0.2)
    # problem 0: worse (-1.0) above best (-1.5): 0.5; worst (-0.7) above both: 0.8 + 0.3; problem 1: 0.4
    mixed = torch.tensor([-1.5, -1.0, -0.7, -0.9, -0.5])
    hinge_sum, sft_sum = rrhf_terms(mixed, groups, scores)
    assert hinge_sum.item() == pytest.approx(0.5 + 0.8 + 0.3 + 0.4)
    assert sft_sum.item() == pytest.approx(1.5 + 0.9)
    assert hinge([-1.5, -1.0, -0.7], [3.0, 2.0, 0.0]) == pytest.approx(1.6)


class FixedLogits(torch.nn.Module):
    """A 'model' whose next-token distribution is a fixed table (row = current token)."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(table)

    def forward(self, input_ids: torch.Tensor):
        return type("Output", (), {"logits": self.table[input_ids]})()


def test_ranking_loss_on_a_batch_matches_the_length_normalised_likelihoods() -> None:
    table = torch.log_softmax(torch.randn(5, 5, generator=torch.Generator().manual_seed(0)), dim=-1)
    model = FixedLogits(table.clone())
    input_ids = torch.tensor([[0, 1, 2, 3], [0, 1, 4, 4], [0, 2, 2, 0]])
    labels = torch.tensor([[-100, 1, 2, 3], [-100, 1, 4, -100], [-100, -100, 2, 0]])
    batch = RankedBatch(input_ids, labels, torch.tensor([0, 0, 0]), torch.tensor([3.0, 1.0, 1.0]))
    loss = RankingLoss(rank_weight=1.0, sft_weight=0.5)
    total = loss(model, batch)

    def logp(row: list[tuple[int, int]]) -> float:
        return sum(table[a, b].item() for a, b in row) / len(row)

    p = [logp([(0, 1), (1, 2), (2, 3)]), logp([(0, 1), (1, 4)]), logp([(2, 2), (2, 0)])]
    expected_hinge = max(0.0, p[1] - p[0]) + max(0.0, p[2] - p[0])
    assert total.item() == pytest.approx(expected_hinge + 0.5 * -p[0], abs=1e-5)
    assert loss.targets(batch) == 1
    parts = loss.pop_parts()
    assert parts["rank_loss"].item() == pytest.approx(expected_hinge, abs=1e-5)
    assert parts["sft_loss"].item() == pytest.approx(-p[0], abs=1e-5) and loss.pop_parts() == {}
    total.backward()
    assert model.table.grad is not None and math.isfinite(float(model.table.grad.abs().sum()))


class CharTokenizer:
    """One token per character (its code point), ``~`` as the end token."""

    eos_token, pad_token_id = "~", 0

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": [ord(char) for char in text]}


def test_held_out_ranking_compares_only_responses_within_the_context() -> None:
    # A response cut off by the context has no likelihood: counted, it would tie at 0 with the others
    # cut off and read as a disagreement (the tiny make run's ranking accuracy of 0% was that).
    def record(prompt: str) -> dict:
        responses = [{"text": "ab", "score": 3.0}, {"text": "ba", "score": 0.0}]
        return {"task_id": prompt[:1], "prompt": prompt, "responses": responses}

    tokenizer = CharTokenizer()
    groups, dropped = ranked_groups([record("p" * 10), record("q" * 40)], tokenizer, False, max_len=20)
    assert dropped == 1 and len(groups) == 1 and groups[0].scores == (3.0, 0.0)
    table = torch.log_softmax(torch.randn(128, 128, generator=torch.Generator().manual_seed(0)), dim=-1)
    [values] = probe_logprobs(FixedLogits(table), tokenizer.pad_token_id, groups, max_len=20)
    by_hand = [
        sum(table[a, b].item() for a, b in pairwise([ord("p"), *map(ord, reply)])) / 3
        for reply in ("ab~", "ba~")
    ]
    assert values == pytest.approx(by_hand, abs=1e-5)


def test_the_reference_response_passes_in_completion_and_chat_form() -> None:
    mined = doctest_problems(SOURCE, "repo/halve.py")[0][0]
    problem = parse_problem(mined.record({}), "humaneval", "problems", "halve")
    for chat in (False, True):
        reference = reference_response(problem, chat)
        assert reference is not None and ("```python" in reference) == chat
        [[response]] = score([problem], [[reference]], [["reference"]], chat, SandboxLimits())
        assert response.kind == "passed"
