"""Find the HumanEval-Infilling tasks an empty middle passes, and write their ids (data for
``components/benchmarks/infilling.py``, which leaves them out).

Some masked lines do not matter to HumanEval's tests (``closest_pair = None`` before a loop that sets it,
one ``elif`` of a ladder no test reaches): with the middle left empty the program still passes, so the
task says nothing about a model. Run after a change to the masking rules::

    python -m components.evaluate.trivial_infills    # ~4 min on 2 cores: 6,848 programs in the sandbox
"""

from __future__ import annotations

import json
import sys

from components.benchmarks import humaneval_file, read_problems
from components.benchmarks.infilling import KINDS, TRIVIAL_FILE, infilling_problems
from components.evaluate.scoring import score_samples


def trivial_tasks() -> list[str]:
    """Ids of every single- and multi-line infilling task whose empty middle passes the tests."""
    humaneval = read_problems(humaneval_file(), "humaneval", "humaneval")
    found = []
    for kind in KINDS:
        problems = {p.task_id: p for p in infilling_problems(humaneval, kind, kind, keep_trivial=True)}
        results = score_samples([{"task_id": task, "completion": ""} for task in problems], problems)
        found += [result["task_id"] for result in results if result["passed"]]
    return found


def main() -> int:
    """Write TRIVIAL_FILE."""
    found = trivial_tasks()
    TRIVIAL_FILE.write_text(json.dumps(found, indent=1) + "\n", encoding="utf-8")
    print(f"{TRIVIAL_FILE}: {len(found)} tasks an empty middle passes", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
