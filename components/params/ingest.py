"""Parameters of the ingest stage (``ingest:`` in params.yaml)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from components.languages import normalize_language
from components.params.base import StrictModel

#: Our document columns a ``files`` source can map from its own columns.
MAPPABLE_COLUMNS = ("content", "repo", "path", "lang", "stars", "license")

SourceKind = Literal["python-stdlib", "site-packages", "system", "local", "files", "git", "issues"]
#: The ``lang`` every document of a source kind gets (the other kinds: by file).
KIND_LANGUAGES = {"git": "git-commits", "issues": "github-issues"}


class SourceConfig(StrictModel):
    """One corpus source; ``kind`` picks the reader.

    - ``python-stdlib``: the running interpreter's standard library, one repo per top-level module.
    - ``site-packages``: the installed distributions, one repo each.
    - ``system``: code in other languages this machine has (C/C++ headers, npm's JavaScript, Perl's
      library, Go and Rust sources where installed; ``SYSTEM_CODE_ROOTS`` in components/ingest/sources.py).
    - ``local``: directories (``paths``); each subdirectory is a repo, or the directory itself when it
      is a git work tree.
    - ``files``: Parquet/JSONL files, globs or saved ``datasets`` directories (``paths``), local or
      ``s3://``; ``columns`` maps our columns to theirs where the defaults do not find them.
    - ``git``: git repositories, or folders of them (``paths``): one commit document per changed file
      (components/ingest/git_commits.py).
    - ``issues``: JSONL files of issue threads (``paths``; schema in components/ingest/issues.py).
    """

    kind: SourceKind
    #: Prefix of the repo names (``<name>/<repo>``). Default: the kind for python-stdlib, site-packages
    #: and system, no prefix for the others (their repo names come from the data).
    name: str | None = None
    paths: list[str] = Field(default_factory=list)
    #: ``files`` only; ``auto`` decides per path (extension, or a saved dataset directory).
    format: Literal["auto", "parquet", "jsonl", "dataset"] = "auto"
    #: ``files`` only: our column -> the source's column, e.g. ``{repo: max_stars_repo_name}``.
    columns: dict[str, str] = Field(default_factory=dict)
    #: ``files`` only: fsspec options for ``s3://`` paths (default: endpoint and keys from AWS_* env).
    storage_options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("columns")
    @classmethod
    def _known_columns(cls, columns: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(columns) - set(MAPPABLE_COLUMNS))
        if unknown:
            raise ValueError(f"unknown column(s) {unknown}; mappable: {list(MAPPABLE_COLUMNS)}")
        return columns

    @model_validator(mode="after")
    def _options_fit_kind(self) -> SourceConfig:
        needs_paths = self.kind in ("local", "files", "git", "issues")
        if needs_paths and not self.paths:
            raise ValueError(f"a {self.kind!r} source needs 'paths'")
        if not needs_paths and self.paths:
            raise ValueError(f"a {self.kind!r} source takes no 'paths'")
        if self.kind != "files" and (self.columns or self.storage_options or self.format != "auto"):
            raise ValueError("'columns', 'storage_options' and 'format' apply to 'files' sources only")
        return self

    @property
    def repo_prefix(self) -> str:
        """What repo names of this source start with (``""`` for none)."""
        if self.name is not None:
            return self.name
        return self.kind if self.kind in ("python-stdlib", "site-packages", "system") else ""

    def describe(self) -> str:
        """How errors and reports name this source: kind plus paths."""
        return f"{self.kind} source" + (f" {', '.join(self.paths)}" if self.paths else "")


class NotebookConfig(StrictModel):
    """How ``.ipynb`` files become documents (components/ingest/notebooks.py)."""

    #: ``structured`` (lang ``jupyter-structured``), ``script`` (``jupyter-scripts``) or ``raw`` (the JSON).
    form: Literal["structured", "script", "raw"] = "structured"
    #: Characters of a code cell's text output kept in the structured form.
    max_output_chars: int = Field(1000, ge=0)


class IngestConfig(StrictModel):
    """Which sources to read, which languages to keep, and the caps."""

    sources: list[SourceConfig] = Field(
        default_factory=lambda: [SourceConfig(kind="python-stdlib")], min_length=1
    )
    #: Languages kept (names from components/languages.py); ``null`` keeps every known language.
    languages: list[str] | None = Field(["python"], min_length=1)
    #: Extra or overriding entries: ``.ext: language`` or ``FileName: language``.
    extensions: dict[str, str] = Field(default_factory=dict)
    #: Caps on the documents kept, applied in (repo, path) order: the longest prefix that fits.
    max_files: int | None = Field(None, gt=0)
    max_bytes: int | None = Field(None, gt=0)
    #: Per-language caps on content bytes (the longest (repo, path)-sorted prefix of each language).
    max_bytes_per_language: dict[str, int] = Field(default_factory=dict)
    #: Files larger than this (UTF-8 bytes) are skipped; local files are not read (stat first).
    max_file_bytes: int = Field(1_000_000, gt=0)
    notebooks: NotebookConfig = NotebookConfig()

    @field_validator("max_bytes_per_language")
    @classmethod
    def _positive_language_caps(cls, caps: dict[str, int]) -> dict[str, int]:
        bad = {lang: cap for lang, cap in caps.items() if cap <= 0 or lang != normalize_language(lang)}
        if bad:
            raise ValueError(f"caps must be > 0 and keyed by our language names (lower case, '-'): {bad}")
        return caps

    @model_validator(mode="after")
    def _source_languages_selected(self) -> IngestConfig:
        for index, source in enumerate(self.sources):
            lang = KIND_LANGUAGES.get(source.kind)
            if lang and self.languages is not None and lang not in self.languages:
                raise ValueError(
                    f"sources[{index}] ({source.kind}) writes lang {lang!r}, which 'languages' leaves out: "
                    f"add it to ingest.languages"
                )
        return self
