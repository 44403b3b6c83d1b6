"""Promotion by approval: the flow run pauses until a person approves or rejects the candidate.

With ``register.promotion.approval: true`` the register stage gives a version that passed its gates the
alias ``challenger`` and the tag ``approval.status=pending``, and never moves ``champion`` itself. The
pipeline flow then runs this flow as a subflow: it shows the candidate's evaluation table (beside the
champion's) in the Prefect UI and pauses with ``wait_for_input`` (Prefect's ``pause_flow_run``). The
reviewer fills the form (approve, name, reason) and resumes the run; an approval moves ``champion``
(the served model follows its alias), a rejection leaves it. The decision is recorded on the version's
tags (``approval.*``). A run nobody resumes within ``timeout_s`` fails and changes nothing.

Resume from a script: ``prefect.flow_runs.resume_flow_run(ID, run_input={"approve": true,
"reviewer": "alice", "reason": "better pass@1"})``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from typing import Any, cast

from prefect import flow, get_run_logger
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.runtime import flow_run

from components.register import registry

DEFAULT_TIMEOUT_S = 24 * 3600


class PromotionDecision(RunInput):
    """The reviewer's form."""

    approve: bool = False
    reviewer: str = ""
    reason: str = ""


@flow(name="promotion-approval")
async def approve_promotion(
    model_name: str, version: str, tracking_uri: str, timeout_s: int = DEFAULT_TIMEOUT_S
) -> dict[str, Any]:
    """Pause for a person's decision on promoting ``version`` of ``model_name``; apply it."""
    logger = get_run_logger()
    registry.connect(tracking_uri)
    table = registry.approval_table(model_name, version)
    logger.info(
        "waiting for approval of %s version %s (resume this flow run in the Prefect UI)", model_name, version
    )
    pause = pause_flow_run(  # Prefect's sync-compatible call: awaitable inside an async flow
        wait_for_input=PromotionDecision.with_initial_data(description=table),
        timeout=timeout_s,
        key=f"approval-{model_name}-{version}",
    )
    decision = await cast(Awaitable[PromotionDecision], pause)
    reviewer = decision.reviewer or "unknown"
    champion = await asyncio.to_thread(
        registry.decide_promotion,
        model_name,
        version,
        decision.approve,
        reviewer,
        decision.reason,
        str(flow_run.get_id() or ""),
    )
    verdict = "approved" if decision.approve else "rejected"
    logger.info(
        "%s version %s %s by %s (%s); champion is %s",
        model_name,
        version,
        verdict,
        reviewer,
        decision.reason,
        champion,
    )
    return {"version": version, "approved": decision.approve, "reviewer": reviewer, "champion": champion}


def main(argv: list[str] | None = None) -> int:
    """``python -m flows.approval KWARGS_JSON``: run the approval flow on its own."""
    import sys

    kwargs = json.loads((sys.argv[1:] if argv is None else argv)[0])
    result = asyncio.run(approve_promotion(**kwargs))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
