"""Which language a file is in: a table of file extensions and special file names (data, not code).

``ingest.extensions`` in params.yaml adds or overrides entries: a key starting with ``.`` is an
extension (``.pyx: cython``), any other key an exact file name (``SConstruct: python``).
Language names are lower case; names that datasets spell differently (``C++``, ``Jupyter Notebook``)
are mapped through :data:`LANGUAGE_ALIASES`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath

from components.formats import FORMAT_LANGUAGES

#: Extension (with the dot) -> language. Looked up as written first, then lower-cased.
EXTENSION_LANGUAGES: dict[str, str] = {
    # Python
    ".py": "python",
    ".pyi": "python",
    ".pyw": "python",
    ".pyx": "cython",
    ".pxd": "cython",
    ".ipynb": "jupyter-notebook",
    # C family
    ".c": "c",
    ".h": "c",
    ".cc": "cpp",
    ".cpp": "cpp",
    ".cxx": "cpp",
    ".c++": "cpp",
    ".C": "cpp",
    ".hh": "cpp",
    ".hpp": "cpp",
    ".hxx": "cpp",
    ".h++": "cpp",
    ".cu": "cuda",
    ".cuh": "cuda",
    ".m": "objective-c",
    ".mm": "objective-cpp",
    ".cs": "csharp",
    # JVM
    ".java": "java",
    ".kt": "kotlin",
    ".kts": "kotlin",
    ".scala": "scala",
    ".groovy": "groovy",
    ".gradle": "groovy",
    ".clj": "clojure",
    # Web
    ".js": "javascript",
    ".mjs": "javascript",
    ".cjs": "javascript",
    ".jsx": "javascript",
    ".ts": "typescript",
    ".mts": "typescript",
    ".cts": "typescript",
    ".tsx": "typescript",
    ".vue": "vue",
    ".svelte": "svelte",
    ".html": "html",
    ".htm": "html",
    ".css": "css",
    ".scss": "scss",
    ".sass": "sass",
    ".less": "less",
    ".php": "php",
    # Systems and others
    ".go": "go",
    ".rs": "rust",
    ".swift": "swift",
    ".zig": "zig",
    ".nim": "nim",
    ".d": "d",
    ".f": "fortran",
    ".f90": "fortran",
    ".f95": "fortran",
    ".jl": "julia",
    ".r": "r",
    ".R": "r",
    ".rb": "ruby",
    ".pl": "perl",
    ".pm": "perl",
    ".lua": "lua",
    ".dart": "dart",
    ".hs": "haskell",
    ".ml": "ocaml",
    ".mli": "ocaml",
    ".fs": "fsharp",
    ".erl": "erlang",
    ".ex": "elixir",
    ".exs": "elixir",
    ".el": "emacs-lisp",
    ".lisp": "common-lisp",
    ".scm": "scheme",
    ".rkt": "racket",
    ".sol": "solidity",
    ".v": "verilog",
    ".sv": "systemverilog",
    ".vhd": "vhdl",
    ".vhdl": "vhdl",
    ".asm": "assembly",
    ".s": "assembly",
    ".S": "assembly",
    ".sql": "sql",
    ".proto": "protocol-buffer",
    ".tex": "tex",
    ".bib": "bibtex",
    # Shell and build
    ".sh": "shell",
    ".bash": "shell",
    ".zsh": "shell",
    ".fish": "fish",
    ".ps1": "powershell",
    ".bat": "batchfile",
    ".cmd": "batchfile",
    ".mk": "makefile",
    ".mak": "makefile",
    ".cmake": "cmake",
    ".dockerfile": "dockerfile",
    ".tf": "hcl",
    ".hcl": "hcl",
    # Data, config and docs
    ".json": "json",
    ".jsonl": "json",
    ".yaml": "yaml",
    ".yml": "yaml",
    ".toml": "toml",
    ".ini": "ini",
    ".cfg": "ini",
    ".xml": "xml",
    ".xsd": "xml",
    ".xsl": "xml",
    ".svg": "xml",
    ".csv": "csv",
    ".tsv": "tsv",
    ".md": "markdown",
    ".markdown": "markdown",
    ".rst": "restructuredtext",
    ".txt": "text",
    # The rest of StarCoder's 86 languages (bigcode/starcoderdata's directory names)
    ".adb": "ada",
    ".ads": "ada",
    ".agda": "agda",
    ".als": "alloy",
    ".g4": "antlr",
    ".applescript": "applescript",
    ".aug": "augeas",
    ".awk": "awk",
    ".bsv": "bluespec",
    ".coffee": "coffeescript",
    ".elm": "elm",
    ".glsl": "glsl",
    ".vert": "glsl",
    ".frag": "glsl",
    ".idr": "idris",
    ".thy": "isabelle",
    ".jsp": "java-server-pages",
    ".lean": "lean",
    ".lagda": "literate-agda",
    ".litcoffee": "literate-coffeescript",
    ".lhs": "literate-haskell",
    ".mpl": "maple",
    ".nb": "mathematica",
    ".wl": "mathematica",
    ".pas": "pascal",
    ".pro": "prolog",
    ".Rmd": "rmarkdown",
    ".rmd": "rmarkdown",
    ".sas": "sas",
    ".st": "smalltalk",
    ".sparql": "sparql",
    ".rq": "sparql",
    ".stan": "stan",
    ".sml": "standard-ml",
    ".do": "stata",
    ".ado": "stata",
    ".tcl": "tcl",
    ".tcsh": "tcsh",
    ".thrift": "thrift",
    ".vb": "visual-basic",
    ".xslt": "xslt",
    ".y": "yacc",
    ".yy": "yacc",
}

#: Exact file name -> language, for files whose name, not extension, says what they are.
FILENAME_LANGUAGES: dict[str, str] = {
    "Makefile": "makefile",
    "GNUmakefile": "makefile",
    "makefile": "makefile",
    "Dockerfile": "dockerfile",
    "Containerfile": "dockerfile",
    "CMakeLists.txt": "cmake",
    "Jenkinsfile": "groovy",
    "Rakefile": "ruby",
    "Gemfile": "ruby",
    "BUILD": "starlark",
    "BUILD.bazel": "starlark",
    "WORKSPACE": "starlark",
}

#: Spellings used by datasets (The Stack's ``lang``, GitHub linguist) -> our language name.
LANGUAGE_ALIASES: dict[str, str] = {
    "c++": "cpp",
    "c#": "csharp",
    "c-sharp": "csharp",
    "f-sharp": "fsharp",
    "matlab": "matlab",  # known from declared names only: .m is objective-c
    "f#": "fsharp",
    "objective-c++": "objective-cpp",
    "batchfile": "batchfile",
    "bash": "shell",
    "sh": "shell",
    "js": "javascript",
    "ts": "typescript",
    "py": "python",
    "yml": "yaml",
}

#: Every language name the tables know.
KNOWN_LANGUAGES: frozenset[str] = frozenset(
    [
        *EXTENSION_LANGUAGES.values(),
        *FILENAME_LANGUAGES.values(),
        *LANGUAGE_ALIASES.values(),
        *FORMAT_LANGUAGES,
    ]
)


def normalize_language(name: str) -> str:
    """Our spelling of a language name: lower case, words joined by ``-``, aliases resolved
    (``"C++"`` -> ``"cpp"``, ``"Visual Basic"`` -> ``"visual-basic"``)."""
    lowered = name.strip().lower()
    if lowered in LANGUAGE_ALIASES:
        return LANGUAGE_ALIASES[lowered]
    joined = "-".join(lowered.split())
    return LANGUAGE_ALIASES.get(joined, joined)


def emitted_languages(selected: Sequence[str] | None, extensions: Mapping[str, str]) -> frozenset[str]:
    """Every ``lang`` value ingest can write under ``ingest.languages`` and ``ingest.extensions``.

    The one place that says it: ingest drops any other language (``unknown_language``), and validate's
    language expectation is exactly this set.
    """
    if selected is not None:
        return frozenset(normalize_language(name) for name in selected)
    return KNOWN_LANGUAGES | {normalize_language(name) for name in extensions.values()}


def language_table(overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """The lookup table: file names and extensions -> language, with ``overrides`` applied last."""
    table = {**EXTENSION_LANGUAGES, **FILENAME_LANGUAGES}
    table.update({key: normalize_language(value) for key, value in (overrides or {}).items()})
    return table


def language_of(path: str, table: Mapping[str, str]) -> str | None:
    """The language of ``path`` by its file name, then its extension; ``None`` when unknown."""
    name = PurePosixPath(path).name
    if name in table:
        return table[name]
    suffix = PurePosixPath(name).suffix
    if not suffix:
        return None
    return table.get(suffix) or table.get(suffix.lower())
