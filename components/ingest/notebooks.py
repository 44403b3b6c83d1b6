"""Jupyter notebooks as StarCoder trained on them: as scripts, or as structured cells with their outputs.

- ``script`` (``jupyter-scripts``): the code cells, with markdown cells as comments of the kernel's
  language, separated by blank lines.
- ``structured`` (``jupyter-structured``): ``<jupyter_start>``, then per cell ``<jupyter_text>`` + markdown
  or ``<jupyter_code>`` + code followed by ``<jupyter_output>`` + its text output (streams, ``text/plain``
  results, ``ename: evalue`` of errors), cut to ``max_output_chars``; ``<empty_output>`` when there is
  none. Images and HTML are dropped; raw cells are left out.

nbformat reads the file (and upgrades v3 notebooks to v4); a file it cannot read is dropped as
``bad_notebook``, one without cells as ``empty``.
"""

from __future__ import annotations

from typing import Any, Literal

from components.formats import (
    EMPTY_OUTPUT,
    JUPYTER_CODE,
    JUPYTER_OUTPUT,
    JUPYTER_SCRIPTS,
    JUPYTER_START,
    JUPYTER_STRUCTURED,
    JUPYTER_TEXT,
)

NOTEBOOK = "jupyter-notebook"
BAD_NOTEBOOK = "bad_notebook"
NotebookForm = Literal["script", "structured", "raw"]
#: The ``lang`` a notebook gets in each form.
FORM_LANGUAGES: dict[str, str] = {
    "script": JUPYTER_SCRIPTS,
    "structured": JUPYTER_STRUCTURED,
    "raw": NOTEBOOK,
}
#: Line comment of a kernel language (default ``#``) for markdown in the script form.
COMMENT_PREFIXES: dict[str, str] = {
    **dict.fromkeys(("c", "c++", "cpp", "csharp", "go", "java", "javascript", "kotlin", "rust"), "//"),
    **dict.fromkeys(("scala", "swift", "typescript"), "//"),
    **dict.fromkeys(("haskell", "lua", "sql"), "--"),
    "matlab": "%",
}


def convert_notebook(text: str, form: NotebookForm, max_output_chars: int) -> tuple[str | None, str | None]:
    """``(content, None)`` of a notebook in ``form``, or ``(None, skip reason)``."""
    if form == "raw":
        return text, None
    import nbformat

    try:
        notebook = nbformat.reads(text, as_version=4)
        cells = [cell for cell in notebook.cells if cell.cell_type in ("markdown", "code")]
    except Exception:  # nbformat raises JSON, schema and version errors of several types
        return None, BAD_NOTEBOOK
    if not any(_source(cell).strip() for cell in cells):
        return None, "empty"
    if form == "script":
        return _script(cells, _comment_prefix(notebook.metadata)), None
    return _structured(cells, max_output_chars), None


def _source(cell: Any) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else str(source)


def _comment_prefix(metadata: Any) -> str:
    language = (metadata.get("kernelspec") or {}).get("language") or (
        metadata.get("language_info") or {}
    ).get("name")
    return COMMENT_PREFIXES.get(str(language or "python").lower(), "#")


def _script(cells: list[Any], comment: str) -> str:
    parts = []
    for cell in cells:
        source = _source(cell).strip("\n")
        if not source.strip():
            continue
        if cell.cell_type == "markdown":
            source = "\n".join(f"{comment} {line}".rstrip() for line in source.splitlines())
        parts.append(source)
    return "\n\n".join(parts) + "\n"


def _structured(cells: list[Any], max_output_chars: int) -> str:
    parts = [JUPYTER_START]
    for cell in cells:
        source = _source(cell)
        if cell.cell_type == "markdown":
            parts += [JUPYTER_TEXT, source]
            continue
        output = _output_text(cell.get("outputs", []))[:max_output_chars]
        parts += [JUPYTER_CODE, source, JUPYTER_OUTPUT, output if output.strip() else EMPTY_OUTPUT]
    return "".join(parts)


def _output_text(outputs: list[Any]) -> str:
    """The text a code cell printed or returned; images, HTML and tracebacks left out."""
    texts = []
    for output in outputs:
        kind = output.get("output_type")
        if kind == "stream":
            texts.append(_joined(output.get("text", "")))
        elif kind in ("execute_result", "display_data"):
            texts.append(_joined(output.get("data", {}).get("text/plain", "")))
        elif kind == "error":
            texts.append(f"{output.get('ename', '')}: {output.get('evalue', '')}\n")
    return "".join(texts)


def _joined(value: Any) -> str:
    return "".join(value) if isinstance(value, list) else str(value)
