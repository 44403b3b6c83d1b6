"""The ``issues`` source: GitHub issue threads as StarCoder's issue documents.

Input: JSONL files (``paths``, local or any fsspec URL, ``.gz``/``.zst`` too), one issue per line::

    {"repo": "octo/tool", "number": 7, "title": "Crash on empty input",
     "events": [{"type": "opened", "author": "alice", "text": "It crashes."},
                {"type": "comment", "author": "bob", "text": "@alice which version?"},
                {"type": "closed", "author": "alice"}]}

``type`` is ``opened`` (the description), ``comment``, ``closed`` or ``reopened``. Output, one document
per issue (``repo``, ``path`` ``issues/<number>``, ``lang`` ``github-issues``)::

    <issue_start>Title: Crash on empty input
    username_0: It crashes.<issue_comment>username_1: @username_0 which version?<issue_closed>

As StarCoder did: authors, then other ``@mentioned`` users, become ``username_0``, ``username_1``, … in
order of appearance; events by bots (``[bot]`` or ``-bot`` names) are dropped; a thread with more than
:data:`MAX_EVENTS` events, or more than ``ingest.max_file_bytes`` of text, is skipped (``too_large``). The
clean stage's PII pass then redacts what the text itself holds (e-mails, keys, addresses).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from components.formats import GITHUB_ISSUES, ISSUE_CLOSED, ISSUE_COMMENT, ISSUE_START
from components.ingest.readers import BAD_RECORD, EMPTY, TOO_LARGE, FileRules, TaskResult
from components.ingest.runs import SortedRuns
from components.shards import filesystem, make_document

#: Threads longer than this are left out (StarCoder dropped very long threads).
MAX_EVENTS = 100
EVENT_TYPES = ("opened", "comment", "closed", "reopened")
_BOT = re.compile(r"(\[bot\]|-bot|bot\[.*\])$", re.IGNORECASE)
_MENTION = re.compile(r"(?<![\w.+-])@([A-Za-z0-9](?:[A-Za-z0-9-]{0,38}))")


class BadIssue(ValueError):
    """A line that does not follow the documented schema (the message names the field)."""


def is_bot(author: str) -> bool:
    """Whether ``author`` is a bot account (``dependabot[bot]``, ``ci-bot``)."""
    return bool(_BOT.search(author))


def issue_document(issue: dict[str, Any]) -> str | None:
    """The document of one issue record, or ``None`` when no human event is left."""
    title = issue.get("title")
    events = issue.get("events")
    if not isinstance(title, str) or not isinstance(events, list):
        raise BadIssue("needs a string 'title' and a list 'events'")
    names: dict[str, str] = {}
    parts: list[str] = []
    for index, event in enumerate(events):
        kind, author = (event.get("type"), event.get("author")) if isinstance(event, dict) else (None, None)
        if kind not in EVENT_TYPES or not isinstance(author, str):
            raise BadIssue(f"events[{index}] needs 'type' in {list(EVENT_TYPES)} and a string 'author'")
        if is_bot(author):
            continue
        if kind == "closed":
            parts.append(ISSUE_CLOSED)
            continue
        if kind == "reopened":
            continue
        name = names.setdefault(author, f"username_{len(names)}")
        text = str(event.get("text") or "")
        separator = "\n" if not parts else ISSUE_COMMENT
        parts.append(f"{separator}{name}: {text}")
    if not names:
        return None
    body = "".join(parts)
    body = _MENTION.sub(lambda match: "@" + names.setdefault(match.group(1), f"username_{len(names)}"), body)
    return f"{ISSUE_START}Title: {title}{body}"


@dataclass(frozen=True)
class IssuesFileTask:
    """One JSONL file of issues to read."""

    source_index: int
    url: str
    repo_prefix: str
    rules: FileRules

    def read(self, out: SortedRuns) -> TaskResult:
        """One document per issue; bad lines, bot-only and oversized threads counted by reason."""
        result = TaskResult(self.source_index)
        fs, path = filesystem(self.url)
        with fs.open(path, "rt", encoding="utf-8", compression="infer") as handle:
            for line_number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                result.files_seen += 1
                result.bytes_read += len(line)
                self._add(line, line_number, result, out)
        return result

    def _add(self, line: str, line_number: int, result: TaskResult, out: SortedRuns) -> None:
        where = f"{self.url}:{line_number}"
        try:
            issue = json.loads(line)
            if not isinstance(issue, dict):
                raise BadIssue("is not a JSON object")
            repo, number = issue.get("repo"), issue.get("number")
            if not isinstance(repo, str) or not repo or not isinstance(number, int):
                raise BadIssue("needs a string 'repo' and an integer 'number'")
            document = issue_document(issue)
        except (json.JSONDecodeError, BadIssue) as error:
            result.excluded.drop(BAD_RECORD, {}, detail=f"{where}: {error}")
            return
        repo = f"{self.repo_prefix}/{repo}" if self.repo_prefix else repo
        shown = {"repo": repo, "path": f"issues/{number}", "lang": GITHUB_ISSUES}
        if document is None:
            result.excluded.drop(EMPTY, shown, detail=f"{where}: no event by a person")
        elif len(issue["events"]) > MAX_EVENTS or len(document.encode("utf-8")) > self.rules.max_file_bytes:
            result.excluded.drop(TOO_LARGE, shown, detail=where)
        else:
            out.add(make_document(repo, shown["path"], GITHUB_ISSUES, document))
