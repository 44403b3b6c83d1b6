"""One training rank: ``deepspeed ... --module components.train.worker --stage pretrain ...``.

Started by the ``deepspeed`` launcher (see :mod:`components.train.launch`), once per rank. It reads the
job and context the stage process wrote, asks the stage package for its
:class:`~components.train.plan.TrainPlan` (``components.<stage>.train_plan(job, context, io)``) and runs
the shared engine.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from components.params import TRAINING_JOBS, StageContext
from components.train.engine import STOPPED_EXIT_CODE, train


def main(argv: list[str] | None = None) -> int:
    """Parse the rank's command line, build the stage's plan and train it."""
    parser = argparse.ArgumentParser(prog="python -m components.train.worker", description=__doc__)
    parser.add_argument("--stage", required=True, choices=sorted(TRAINING_JOBS), help="training stage")
    parser.add_argument("--job-json", required=True, help="job and context written by the stage process")
    parser.add_argument("--input", action="append", default=[], help="stage input (repeatable)")
    parser.add_argument("--output", required=True, help="stage output (the exported model)")
    args = parser.parse_args(argv)
    payload = json.loads(Path(args.job_json).read_text())
    job = TRAINING_JOBS[args.stage].model_validate(payload["job"])
    context = StageContext.model_validate(payload["context"])
    stage = importlib.import_module(f"components.{args.stage}")
    # A stage whose ranks read other inputs than the stage itself (align's iterations) says so.
    io = getattr(stage, "WORKER_STAGE", stage.STAGE).resolve(args.input, args.output)
    try:
        train(job, context, stage.train_plan(job, context, io))
    except SystemExit as exc:
        if exc.code == STOPPED_EXIT_CODE:
            print(
                f"codemill {args.stage}: stopped on request (checkpoints kept)", file=sys.stderr, flush=True
            )
        raise
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
