"""Documents beyond source files, as StarCoder built them: notebooks, git commits and issue threads."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from components.formats import ALL_FORMAT_TOKENS
from components.ingest import STAGE
from components.params import ParamsError
from components.shards import list_shards, read_shard
from components.stage_runner import call_stage
from components.tokens.tokenizer import SPECIAL_TOKENS, TokenCodec, train_tokenizer
from tests.conftest import make_params


def ingest(output: Path, sources: list[dict[str, Any]], **ingest: Any) -> tuple[Any, list[dict[str, Any]]]:
    """Run the stage into ``output``: its report and every document written."""
    params = make_params(ingest={"sources": sources, **ingest}, executor={"workers": 1})
    report = call_stage(STAGE, params, [], str(output))
    return report, [row for path in list_shards(str(output)) for row in read_shard(path).to_pylist()]


def notebook(cells: list[dict[str, Any]], language: str = "python") -> str:
    return json.dumps(
        {
            "nbformat": 4,
            "nbformat_minor": 5,
            "metadata": {"kernelspec": {"name": language, "language": language, "display_name": language}},
            "cells": cells,
        }
    )


def markdown(text: str) -> dict[str, Any]:
    return {"cell_type": "markdown", "id": f"m{abs(hash(text)) % 10**6}", "metadata": {}, "source": text}


def code(text: str, outputs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "cell_type": "code",
        "id": f"c{abs(hash(text)) % 10**6}",
        "metadata": {},
        "execution_count": 1,
        "source": text,
        "outputs": outputs,
    }


LONG_OUTPUT = "".join(f"line {i}\n" for i in range(500))
CELLS = [
    markdown("# Loading\nRead the data."),
    code("import json\nprint('x' * 3)", [{"output_type": "stream", "name": "stdout", "text": LONG_OUTPUT}]),
    code(
        "plot()",
        [
            {
                "output_type": "display_data",
                "metadata": {},
                "data": {"image/png": "iVBORw0KGgo=", "text/plain": "<Figure size 640x480>"},
            }
        ],
    ),
    code("x = 1", []),
    code(
        "1 / 0",
        [
            {
                "output_type": "error",
                "ename": "ZeroDivisionError",
                "evalue": "division by zero",
                "traceback": ["\x1b[31m..."],
            }
        ],
    ),
]


@pytest.mark.parametrize("form", ["structured", "script"])
def test_notebook_in_both_forms_with_outputs_truncated(tmp_path: Path, form: str) -> None:
    repo = tmp_path / "repos" / "analysis"
    repo.mkdir(parents=True)
    (repo / "explore.ipynb").write_text(notebook(CELLS))
    (repo / "broken.ipynb").write_text("{not a notebook")
    sources = [{"kind": "local", "paths": [str(tmp_path / "repos")]}]

    report, (document,) = ingest(
        tmp_path / "out", sources, languages=None, notebooks={"form": form, "max_output_chars": 40}
    )

    assert report.drops == {"bad_notebook": 1}
    content = document["content"]
    if form == "script":
        assert document["lang"] == "jupyter-scripts"
        assert content == (
            "# # Loading\n# Read the data.\n\nimport json\nprint('x' * 3)\n\nplot()\n\nx = 1\n\n1 / 0\n"
        )
        return
    assert document["lang"] == "jupyter-structured"
    assert content == (
        "<jupyter_start><jupyter_text># Loading\nRead the data."
        "<jupyter_code>import json\nprint('x' * 3)<jupyter_output>"
        + LONG_OUTPUT[:40]
        + "<jupyter_code>plot()<jupyter_output><Figure size 640x480>"
        "<jupyter_code>x = 1<jupyter_output><empty_output>"
        "<jupyter_code>1 / 0<jupyter_output>ZeroDivisionError: division by zero\n"
    )
    assert "iVBORw0KGgo" not in content


def test_selecting_a_notebook_form_keeps_only_notebooks_in_it(tmp_path: Path) -> None:
    repo = tmp_path / "repos" / "analysis"
    repo.mkdir(parents=True)
    (repo / "explore.ipynb").write_text(notebook(CELLS[:2]))
    (repo / "tool.py").write_text("def f():\n    return 1\n")
    sources = [{"kind": "local", "paths": [str(tmp_path / "repos")]}]
    report, documents = ingest(
        tmp_path / "out", sources, languages=["python", "jupyter-scripts"], notebooks={"form": "structured"}
    )
    assert [d["lang"] for d in documents] == ["python"]
    assert report.drops == {"language_not_selected": 1}


def test_each_format_token_is_one_id_of_the_tokenizer() -> None:
    corpus = ["def f():\n    return 1\n" * 20, "<jupyter_code>x = 1<jupyter_output>1\n" * 5]
    codec = TokenCodec(train_tokenizer(corpus, vocab_size=400, min_frequency=1))
    ids = [codec.tokenizer.token_to_id(token) for token in ALL_FORMAT_TOKENS]
    assert ids == list(range(len(SPECIAL_TOKENS), len(SPECIAL_TOKENS) + len(ALL_FORMAT_TOKENS)))
    text = "<jupyter_start><jupyter_code>x = 1<jupyter_output><empty_output>"
    structured = codec.encode_batch([text], ["jupyter-structured"])[0]
    assert [int(i) for i in structured if i in ids] == [ids[0], ids[2], ids[3], ids[4]]
    assert codec.decode(structured) == text
    # In a source file the same strings stay plain text, with no special id.
    plain = codec.encode_batch([text], ["python"])[0]
    assert not set(plain.tolist()) & set(ids)
    assert codec.decode(plain) == text


def git(repo: Path, *args: str, email: str = "dev@corp.example") -> None:
    env = {
        "GIT_AUTHOR_NAME": "Dev",
        "GIT_AUTHOR_EMAIL": email,
        "GIT_COMMITTER_NAME": "Dev",
        "GIT_COMMITTER_EMAIL": email,
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_CONFIG_NOSYSTEM": "1",
        "PATH": os.environ["PATH"],
    }
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, env=env)


def commit(repo: Path, message: str, files: dict[str, str | bytes | None]) -> str:
    """Write (str/bytes), or delete (None), files and commit them; returns the commit id."""
    for name, content in files.items():
        path = repo / name
        if content is None:
            path.unlink()
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()


def test_git_repository_gives_one_commit_document_per_changed_file(tmp_path: Path) -> None:
    repo = tmp_path / "repos" / "tool"
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    first = commit(repo, "Add greeting", {"hello.py": "print('hi')\n", "blob.c": b"\x89PNG\0\0data"})
    second = commit(
        repo,
        "Greet by name\n\nSigned-off-by: Dev <dev@corp.example>",
        {"hello.py": "import sys\nprint('hi', sys.argv[1])\n", "notes.txt": "x" * 3000},
    )
    third = commit(repo, "Drop the blob", {"blob.c": None})
    (tmp_path / "repos" / "not-a-repo").mkdir()
    sources = [{"kind": "git", "paths": [str(tmp_path / "repos")]}]

    report, documents = ingest(tmp_path / "out", sources, languages=None, max_file_bytes=2000)

    by_path = {d["path"]: d for d in documents}
    assert set(by_path) == {f"{first}/hello.py", f"{second}/hello.py"}
    assert {d["repo"] for d in documents} == {"tool"} and {d["lang"] for d in documents} == {"git-commits"}
    assert by_path[f"{first}/hello.py"]["content"] == (
        "<commit_before><commit_msg>Add greeting<commit_after>print('hi')\n"
    )
    assert by_path[f"{second}/hello.py"]["content"] == (
        "<commit_before>print('hi')\n<commit_msg>Greet by name\n\nSigned-off-by: Dev <<EMAIL>>"
        "<commit_after>import sys\nprint('hi', sys.argv[1])\n"
    )
    assert report.drops == {"binary": 1, "too_large": 1, "deleted_file": 1}
    assert third not in {path.split("/")[0] for path in by_path}


def test_a_git_source_needs_its_language_selected() -> None:
    with pytest.raises(ParamsError, match=r"sources\[1\] \(git\) writes lang 'git-commits'"):
        make_params(ingest={"sources": [{"kind": "python-stdlib"}, {"kind": "git", "paths": ["/x"]}]})


def test_issues_file_gives_anonymised_thread_documents(tmp_path: Path) -> None:
    issues = [
        {
            "repo": "octo/tool",
            "number": 7,
            "title": "Crash on empty input",
            "events": [
                {"type": "opened", "author": "alice", "text": "It crashes. cc @carol"},
                {"type": "comment", "author": "dependabot[bot]", "text": "Bumps a dependency."},
                {"type": "comment", "author": "bob", "text": "@alice which version?"},
                {"type": "comment", "author": "alice", "text": "1.2, mail me at a.smith@corp.com"},
                {"type": "closed", "author": "bob"},
            ],
        },
        {
            "repo": "octo/tool",
            "number": 8,
            "title": "Bump",
            "events": [{"type": "opened", "author": "ci-bot"}],
        },
        {"repo": "octo/tool", "number": 9, "title": "No events key"},
    ]
    path = tmp_path / "issues.jsonl"
    path.write_text("\n".join(json.dumps(issue) for issue in issues) + "\n{broken\n")
    sources = [{"kind": "issues", "paths": [str(path)]}]

    report, (document,) = ingest(tmp_path / "out", sources, languages=["github-issues"])

    assert (document["repo"], document["path"], document["lang"]) == (
        "octo/tool",
        "issues/7",
        "github-issues",
    )
    assert document["content"] == (
        "<issue_start>Title: Crash on empty input\nusername_0: It crashes. cc @username_2"
        "<issue_comment>username_1: @username_0 which version?"
        "<issue_comment>username_0: 1.2, mail me at a.smith@corp.com<issue_closed>"
    )
    assert not {"alice", "bob", "carol", "dependabot"} & set(re.findall(r"[a-z]+", document["content"]))
    assert report.drops == {"empty": 1, "bad_record": 2}
