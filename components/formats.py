"""StarCoder's document formats beyond source files: their structural tokens and ``lang`` names.

A notebook, a commit or an issue thread becomes one document whose text carries structural markers:

- ``jupyter-structured``: ``<jupyter_start><jupyter_text>TEXT<jupyter_code>CODE<jupyter_output>OUTPUT…``
  (``<empty_output>`` for a code cell that printed nothing);
- ``git-commits``: ``<commit_before>OLD<commit_msg>MESSAGE<commit_after>NEW``, one per changed file;
- ``github-issues``: ``<issue_start>Title: …\\nusername_0: text<issue_comment>username_1: text…``
  ``<issue_closed>``.

The markers are special tokens of the tokenizer (one id each). They are parsed as such only in documents
of their own format (by ``lang``): a Python file that mentions ``<commit_msg>`` keeps it as plain text.
``jupyter-scripts`` (a notebook as a script, markdown as comments) has no markers.
"""

from __future__ import annotations

JUPYTER_START = "<jupyter_start>"
JUPYTER_TEXT = "<jupyter_text>"
JUPYTER_CODE = "<jupyter_code>"
JUPYTER_OUTPUT = "<jupyter_output>"
EMPTY_OUTPUT = "<empty_output>"
COMMIT_BEFORE = "<commit_before>"
COMMIT_MSG = "<commit_msg>"
COMMIT_AFTER = "<commit_after>"
ISSUE_START = "<issue_start>"
ISSUE_COMMENT = "<issue_comment>"
ISSUE_CLOSED = "<issue_closed>"

JUPYTER_STRUCTURED = "jupyter-structured"
JUPYTER_SCRIPTS = "jupyter-scripts"
GIT_COMMITS = "git-commits"
GITHUB_ISSUES = "github-issues"

#: ``lang`` of a formatted document -> the markers its text may carry.
FORMAT_TOKENS: dict[str, tuple[str, ...]] = {
    JUPYTER_STRUCTURED: (JUPYTER_START, JUPYTER_TEXT, JUPYTER_CODE, JUPYTER_OUTPUT, EMPTY_OUTPUT),
    GIT_COMMITS: (COMMIT_BEFORE, COMMIT_MSG, COMMIT_AFTER),
    GITHUB_ISSUES: (ISSUE_START, ISSUE_COMMENT, ISSUE_CLOSED),
}

#: Every marker, in tokenizer id order (after the core special tokens).
ALL_FORMAT_TOKENS: tuple[str, ...] = tuple(token for tokens in FORMAT_TOKENS.values() for token in tokens)

#: ``lang`` values that only a converter writes (no file extension maps to them).
FORMAT_LANGUAGES: frozenset[str] = frozenset([*FORMAT_TOKENS, JUPYTER_SCRIPTS])
