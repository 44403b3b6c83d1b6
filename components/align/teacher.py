"""The teacher (``teacher:``): a stronger model that evolves and answers instructions (the evol stage) and
whose greedy answers join the policy's samples (align: PanGu-Coder2 ranked the policy's samples together
with answers from teacher models).

A teacher is either a local model (an exported folder or a registry URI, generated in this process) or any
OpenAI-compatible endpoint (``teacher.endpoint``: ``codemill serve``, vLLM's OpenAI server, a hosted API),
asked through ``/v1/chat/completions`` (chat) or ``/v1/completions`` (plain prompts, with the problem's
stop sequences). Without a teacher, each stage uses the model it starts from.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from components.align.responses import BATCH_SIZE, sample
from components.benchmarks import Problem
from components.errors import StageError
from components.evaluate.evaluator import load_model
from components.evaluate.generate import Decoding, chat_request, generate, user_turn
from components.params.teacher import TeacherConfig
from components.tokens.tokenizer import IM_END

#: Seconds one endpoint request may take.
ENDPOINT_TIMEOUT_S = 300.0


class Teacher(Protocol):
    """Answers problems greedily, and replies to free-form requests as a chat model."""

    def answer(self, problems: Sequence[Problem], chat: bool, max_new_tokens: int, seed: int) -> list[str]:
        """One greedy answer per problem."""
        ...

    def reply(self, requests: Sequence[str], decoding: Decoding, seed: int) -> list[str]:
        """One chat reply per request (a single user turn), decoded as ``decoding`` says (seeded)."""
        ...


@dataclass
class LocalTeacher:
    """A model in this process (the policy itself when no teacher is configured)."""

    model: Any
    tokenizer: Any

    def answer(self, problems: Sequence[Problem], chat: bool, max_new_tokens: int, seed: int) -> list[str]:
        texts = sample(self.model, self.tokenizer, problems, 1, Decoding(max_new_tokens), chat, seed)
        return [answers[0] for answers in texts]

    def reply(self, requests: Sequence[str], decoding: Decoding, seed: int) -> list[str]:
        prompts = [user_turn(self.tokenizer, request) for request in requests]
        return generate(self.model, self.tokenizer, prompts, decoding, BATCH_SIZE, seed, (IM_END,))


@dataclass
class EndpointTeacher:
    """An OpenAI-compatible server: ``base_url`` ends in ``/v1``; ``model`` is the name it serves."""

    base_url: str
    model: str
    api_key: str | None = None

    def _post(self, client: Any, path: str, body: dict[str, Any]) -> dict[str, Any]:
        import httpx

        try:
            answer = client.post(f"{self.base_url.rstrip('/')}{path}", json=body)
        except httpx.HTTPError as exc:
            raise StageError(f"teacher.endpoint {self.base_url}: cannot reach it ({exc})") from exc
        if answer.status_code != 200:
            where = f"teacher.endpoint {self.base_url}{path}"
            raise StageError(f"{where}: HTTP {answer.status_code}: {answer.text[:500]}")
        return answer.json()

    def _client(self) -> Any:
        import httpx

        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        return httpx.Client(timeout=ENDPOINT_TIMEOUT_S, headers=headers)

    def reply(self, requests: Sequence[str], decoding: Decoding, seed: int) -> list[str]:
        body: dict[str, Any] = {"model": self.model, "max_tokens": decoding.max_new_tokens, "seed": seed}
        body["temperature"] = decoding.temperature
        if not decoding.greedy:
            body["top_p"] = decoding.top_p
        texts = []
        with self._client() as client:
            for request in requests:
                messages = [{"role": "user", "content": request}]
                reply = self._post(client, "/chat/completions", {**body, "messages": messages})
                texts.append(reply["choices"][0]["message"]["content"] or "")
        return texts

    def answer(self, problems: Sequence[Problem], chat: bool, max_new_tokens: int, seed: int) -> list[str]:
        texts = []
        with self._client() as client:
            for problem in problems:
                common = {"model": self.model, "max_tokens": max_new_tokens, "temperature": 0, "seed": seed}
                if chat:
                    messages = [{"role": "user", "content": chat_request(problem.prompt, problem.language)}]
                    reply = self._post(client, "/chat/completions", {**common, "messages": messages})
                    texts.append(reply["choices"][0]["message"]["content"] or "")
                else:
                    body = {**common, "prompt": problem.prompt, "stop": list(problem.stop)[:4] or None}
                    texts.append(self._post(client, "/completions", body)["choices"][0]["text"])
        return texts


def load_teacher(config: TeacherConfig, work: Path) -> Teacher:
    """The configured teacher: an endpoint, an exported folder, or a registry URI (downloaded to ``work``)."""
    if config.endpoint is not None:
        return EndpointTeacher(config.endpoint, config.name or "", os.environ.get(config.api_key_env) or None)
    location = config.model or ""
    if location.startswith("models:/"):
        from components.register.registry import download_model

        return LocalTeacher(*load_model(*download_model(location, work)))
    return LocalTeacher(*load_model(Path(location)))
