"""Documents beyond source files, as StarCoder built them: notebooks, git commits and issue threads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from components.formats import ALL_FORMAT_TOKENS
from components.ingest import STAGE
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
