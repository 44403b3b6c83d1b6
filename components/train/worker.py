"""One training rank: ``deepspeed ... --module components.train.worker --stage pretrain ...``.

Started by the ``deepspeed`` launcher (see :mod:`components.train.launch`), once per rank. It reads the
params the stage process wrote, asks the stage package for its :class:`~components.train.engine.TrainPlan`
(``components.<stage>.train_plan(params, io)``) and runs the shared engine.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from components.config import parse_params
from components.stage import StageIO
from components.train.engine import STOPPED_EXIT_CODE, train


def main(argv: list[str] | None = None) -> int:
    """Parse the rank's command line, build the stage's plan and train it."""
    parser = argparse.ArgumentParser(prog="python -m components.train.worker", description=__doc__)
    parser.add_argument("--stage", required=True, help="training stage package, e.g. pretrain")
    parser.add_argument("--params-json", required=True, help="params written by the stage process")
    parser.add_argument("--input", action="append", default=[], help="stage input (repeatable)")
    parser.add_argument("--output", required=True, help="stage output (the exported model)")
    args = parser.parse_args(argv)
    params = parse_params(json.loads(Path(args.params_json).read_text()), source=args.params_json)
    stage = importlib.import_module(f"components.{args.stage}")
    plan = stage.train_plan(params, StageIO(args.input, args.output))
    try:
        train(params, plan)
    except SystemExit as exc:
        if exc.code == STOPPED_EXIT_CODE:
            print(
                f"codemill {args.stage}: stopped on request (checkpoints kept)", file=sys.stderr, flush=True
            )
        raise
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
