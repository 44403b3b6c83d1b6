"""The tokenize stage's split, as documents: what post-training may mine (the training split only).

Post-training data (SFT pairs, problems with tests) is mined from documents of ``data/clean`` whose id is
in the tokenize training split (``train.ids.json``) and whose repository has no document in the
validation split, so nothing mined comes from a repository the validation loss is measured on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from components.errors import StageError
from components.shards import iter_tables
from components.tokens.packing import split_paths

COLUMNS = ("id", "repo", "path", "lang", "license", "content")


def split_ids(data_dir: str, split: str) -> list[str]:
    """Document ids of a tokenize split (``<data_dir>/<split>.ids.json``)."""
    path = split_paths(data_dir, split)["ids"]
    if not path.is_file():
        raise StageError(f"{path}: missing (did the tokenize stage run?)")
    return json.loads(Path(path).read_text(encoding="utf-8"))


def training_documents(clean_dir: str, data_dir: str, language: str | None = None) -> list[dict[str, Any]]:
    """Documents of the training split whose repository has nothing in the validation split (of
    ``language`` only, when given), sorted by id."""
    train_ids, val_ids = set(split_ids(data_dir, "train")), set(split_ids(data_dir, "val"))
    columns = list(COLUMNS)
    documents = [row for table in iter_tables(clean_dir, columns=columns) for row in table.to_pylist()]
    val_repos = {row["repo"] for row in documents if row["id"] in val_ids}
    chosen = [
        row
        for row in documents
        if row["id"] in train_ids
        and row["repo"] not in val_repos
        and (language is None or row["lang"] == language)
    ]
    return sorted(chosen, key=lambda row: row["id"])
