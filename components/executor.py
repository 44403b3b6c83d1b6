"""Map a pure per-shard function over shards: a local process pool, or serially for one worker.

Per-shard work must be a module-level function of picklable arguments, so the same call can later
run on a distributed engine (``executor.address``) without changing stage code.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:  # only a type: importing components.config here would create an import cycle
    from components.config import ExecutorConfig

Item = TypeVar("Item")
Result = TypeVar("Result")


def map_shards(fn: Callable[[Item], Result], items: Sequence[Item], config: ExecutorConfig) -> list[Result]:
    """Apply ``fn`` to every item and return the results in input order."""
    if config.address:
        raise NotImplementedError(
            f"executor.address={config.address!r}: distributed execution is not available yet; "
            "unset executor.address to use the local process pool"
        )
    workers = min(config.workers, len(items))
    if workers <= 1:
        return [fn(item) for item in items]
    # spawn: worker processes must not inherit MLflow/SQLAlchemy threads and sockets from the parent.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        return list(pool.map(fn, items))
