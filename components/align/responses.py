"""Responses to problems for RRTF: sampled from a model, scored in the sandbox, tokenized for training.

A response is generated from :func:`components.evaluate.evaluator.model_prompt` (the chat template for an
instruct policy, as evaluation prompts it); its program is the problem's program around the response
(for a chat reply, its code block), so the sandbox scores what evaluation would score. For training, a
response is the prompt's tokens (no loss) followed by the response's and the end token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from components.align.feedback import Response
from components.benchmarks import Problem
from components.evaluate.evaluator import model_prompt
from components.evaluate.generate import Decoding, chat_reply, extract_code, generate
from components.evaluate.sandbox import run_programs
from components.params.evaluate import SandboxLimits
from components.tokens.tokenizer import IM_END
from components.train.batches import IGNORE_INDEX, Example

#: Prompts generated together.
BATCH_SIZE = 32


def completion(problem: Problem, text: str, chat: bool) -> str:
    """What goes into the problem's program for a response: a chat reply's code block, else the text."""
    return extract_code(text) if chat else text


def reference_response(problem: Problem, chat: bool) -> str | None:
    """The problem's canonical solution written as the policy answers (a chat reply's code block holds
    the whole function, a completion is the body alone); None where the problem has none."""
    if problem.gold is None:
        return None
    return chat_reply(problem.prompt + problem.gold, problem.language) if chat else problem.gold


def sample(
    model: Any,
    tokenizer: Any,
    problems: Sequence[Problem],
    n: int,
    decoding: Decoding,
    chat: bool,
    seed: int,
) -> list[list[str]]:
    """``n`` responses per problem (seeded; greedy when ``decoding.temperature`` is 0)."""
    prompts = [model_prompt(problem, tokenizer, chat) for problem in problems for _ in range(n)]
    stops = {problem.stop for problem in problems}
    stop = () if chat or len(stops) != 1 else next(iter(stops))
    run = Decoding(decoding.max_new_tokens, decoding.temperature, decoding.top_p, stop)
    texts = generate(model, tokenizer, prompts, run, BATCH_SIZE, seed, (IM_END,) if chat else ())
    return [texts[index * n : (index + 1) * n] for index in range(len(problems))]


def score(
    problems: Sequence[Problem],
    texts: Sequence[Sequence[str]],
    sources: Sequence[Sequence[str]],
    chat: bool,
    limits: SandboxLimits,
) -> list[list[Response]]:
    """Each problem's responses with their sandbox outcome (``sources[i][j]`` wrote ``texts[i][j]``)."""
    programs, languages = [], []
    for problem, answers in zip(problems, texts, strict=True):
        for text in answers:
            programs.append(problem.program(completion(problem, text, chat)))
            languages.append(problem.language)
    results = iter(
        run_programs(
            programs, limits.timeout_s, limits.memory_mb, limits.workers, limits.isolation, languages
        )
    )
    return [
        [Response(text, source, next(results).kind) for text, source in zip(answers, who, strict=True)]
        for answers, who in zip(texts, sources, strict=True)
    ]


def encode_response(tokenizer: Any, prompt: str, text: str, chat: bool) -> Example:
    """The tokens of prompt + response + end token, labels only on the response and end token."""
    end = IM_END if chat else tokenizer.eos_token
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    reply_ids = tokenizer(text + end, add_special_tokens=False)["input_ids"]
    tokens = np.asarray(prompt_ids + reply_ids, dtype=np.int64)
    labels = np.asarray([IGNORE_INDEX] * len(prompt_ids) + reply_ids, dtype=np.int64)
    return Example(tokens, labels)
