"""A tiny rule-based teacher behind an OpenAI-compatible API (``/v1/models``, ``/v1/chat/completions``),
for the evol stage's test: ``python tests/teacher_server.py PORT NAME``.

It evolves a question by adding the requested method's first clause, and answers with a Python code
block. Keywords in a seed plant the cases each filter must catch: ``LEAK`` (the rewrite repeats the
template), ``SAME`` (no rewrite), ``DUP`` (two seeds evolve to one text), ``HUMANEVAL`` (the rewrite
quotes a benchmark prompt), ``NOCODE``, ``BADCODE``, ``JSCODE`` and ``REFUSE`` (the answers).
"""

from __future__ import annotations

import json
import re
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from components.benchmarks import humaneval_file, read_problems

QUESTION = re.compile(r"#Given Question#:\n(.*)\n\n#Rewritten Question#:", re.DOTALL)
METHOD = re.compile(r"following method:\n(.*?)\n")
ANSWERS = {
    "NOCODE": "I would loop over the items and add them up one by one.",
    "BADCODE": "```python\ndef total(items:\n    return sum(items)\n```",
    "JSCODE": "```javascript\nfunction total(items) { return items.reduce((a, b) => a + b, 0); }\n```",
    "REFUSE": "Sorry, I cannot help with that.",
}
GOOD_ANSWER = "```python\ndef total(items):\n    return sum(items)\n```\nThis adds the items."


def evolved(question: str, method: str) -> str:
    """The rule-based rewrite of ``question`` by ``method``."""
    if "LEAK" in question:
        return f"{question}\nThis is the rewritten question."
    if "SAME" in question:
        return question
    if "DUP" in question:
        return "Write a function that reverses a list (DUP), handling empty lists."
    if "HUMANEVAL" in question and "has_close_elements" not in question:
        return f"{question}\n{read_problems(humaneval_file())[0].prompt}"
    first_clause = method.split(",")[0].rstrip(".").lower()
    return f"{question}\nAlso: {first_clause}."


def reply(content: str) -> str:
    """The teacher's reply to one user turn."""
    question = QUESTION.search(content)
    if question is not None:
        method = METHOD.search(content)
        return evolved(question.group(1), method.group(1) if method else "")
    return next((answer for key, answer in ANSWERS.items() if key in content), GOOD_ANSWER)


class Handler(BaseHTTPRequestHandler):
    """The two routes a client of the OpenAI API needs here."""

    name = "tiny-teacher"

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path in ("/health", "/v1/models"):
            self._send(200, {"object": "list", "data": [{"id": self.name, "object": "model"}]})
        else:
            self._send(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != "/v1/chat/completions":
            self._send(404, {"error": {"message": f"no route {self.path}"}})
        elif body.get("model") != self.name:
            self._send(404, {"error": {"message": f"model {body.get('model')!r} is not served"}})
        else:
            text = reply(body["messages"][-1]["content"])
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            self._send(200, {"id": "chatcmpl-0", "object": "chat.completion", "choices": [choice]})

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


if __name__ == "__main__":
    Handler.name = sys.argv[2]
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
