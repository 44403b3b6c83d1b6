"""Writing a benchmark's results into docs/benchmarks.md, one ``## `` section per benchmark."""

from __future__ import annotations

from pathlib import Path

BENCHMARKS_DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def write_section(path: Path, section: str) -> None:
    """Replace the section whose heading is ``section``'s first line (or append it); keep the others."""
    heading = section.splitlines()[0]
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n\n"
    start = text.find(heading)
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        following = text.find("\n## ", start + len(heading))
        text = text[:start] + section + ("" if following < 0 else text[following + 1 :])
    path.write_text(text, encoding="utf-8")


def publish(section: str, write: bool = True) -> None:
    """Print a bench's section (its headline is its last line) and, unless told not to, write it into
    docs/benchmarks.md."""
    print(section)
    if write:
        write_section(BENCHMARKS_DOC, section)
