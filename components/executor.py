"""Map a pure per-shard function over shards: serially, on a local process pool, or on a Dask cluster.

Per-shard work is a module-level function of picklable arguments, so the same call runs in this
process, on a local process pool (``executor.workers``) or, when ``executor.address`` names a Dask
scheduler (``tcp://host:8786``), as tasks of a dask.distributed cluster. Results come back in input
order every way, so a stage's output is byte-identical whichever executor ran it.

Failures: an item's exception is re-raised in the stage with a note naming the item (its shard). A Dask
worker that dies while running a task (killed, over its memory limit) makes Dask rerun the task on
another worker, up to the scheduler's ``distributed.scheduler.allowed-failures``; after that the stage
fails with :class:`WorkerLostError`. Stages write through ``atomic_output_dir``, so a failed map never
leaves a partial output behind.
"""

from __future__ import annotations

import multiprocessing
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, TypeVar

from components.errors import StageError
from components.params.shared import ExecutorConfig

Item = TypeVar("Item")
Result = TypeVar("Result")

#: Fields of a task that name what it works on, tried in this order for error messages.
ITEM_NAME_FIELDS = ("shard", "input_path", "source", "url", "path")
#: Seconds to wait for the Dask scheduler at ``executor.address`` before failing the stage.
CONNECT_TIMEOUT_S = 30


class WorkerLostError(StageError):
    """A Dask worker died while running a task, more times than the scheduler retries it."""


def function_name(fn: Callable[..., Any]) -> str:
    """A readable name of ``fn`` (also of a ``functools.partial``) for task keys and messages."""
    name = getattr(fn, "__name__", None) or getattr(getattr(fn, "func", None), "__name__", "task")
    return str(name)


def describe_item(item: object, index: int) -> str:
    """What an item works on: its shard or file path when it has one, else its position."""
    for name in ITEM_NAME_FIELDS:
        value = getattr(item, name, None)
        if isinstance(value, str):
            return value
    return f"item {index} ({type(item).__name__})"


def _failure_note(fn: Callable[..., Any], item: object, index: int, where: str) -> str:
    return f"codemill executor: {function_name(fn)}() failed on {describe_item(item, index)} ({where})"


def map_shards(fn: Callable[[Item], Result], items: Sequence[Item], config: ExecutorConfig) -> list[Result]:
    """Apply ``fn`` to every item and return the results in input order."""
    if not items:
        return []
    if config.address:
        return _map_on_cluster(fn, items, config.address)
    workers = min(config.workers, len(items))
    if workers <= 1:
        return [_call(fn, item, index) for index, item in enumerate(items)]
    # spawn: worker processes must not inherit MLflow/SQLAlchemy threads and sockets from the parent.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = [pool.submit(fn, item) for item in items]
        try:
            return [
                _pool_result(future, fn, item, index)
                for index, (future, item) in enumerate(zip(futures, items, strict=True))
            ]
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise


def run_one(fn: Callable[[Item], Result], item: Item, config: ExecutorConfig) -> Result:
    """Run ``fn(item)`` where the per-shard work runs: in this process, or as one task on the Dask cluster.

    For a stage's global steps (e.g. dedup's LSH buckets and union-find), so that with ``executor.address``
    their memory is a worker's (bounded by its ``--memory-limit``), not the stage process's.
    """
    if config.address:
        return _map_on_cluster(fn, [item], config.address)[0]
    return _call(fn, item, 0)


def _call(fn: Callable[[Item], Result], item: Item, index: int) -> Result:
    try:
        return fn(item)
    except Exception as exc:
        exc.add_note(_failure_note(fn, item, index, "in the stage process"))
        raise


def _pool_result(future: Future[Result], fn: Callable[[Item], Result], item: Item, index: int) -> Result:
    try:
        return future.result()
    except Exception as exc:
        exc.add_note(_failure_note(fn, item, index, "in a local worker process"))
        raise


def _map_on_cluster(fn: Callable[[Item], Result], items: Sequence[Item], address: str) -> list[Result]:
    """Submit one task per item to the Dask scheduler at ``address``; fail on the first failed task."""
    from distributed import Client, as_completed
    from distributed.scheduler import KilledWorker

    try:
        client = Client(address, set_as_default=False, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError) as exc:
        raise StageError(
            f"executor.address={address!r}: cannot connect to the Dask scheduler ({exc})"
        ) from exc
    name = function_name(fn)
    token = uuid.uuid4().hex[:12]  # unique keys: never reuse a result of an earlier run
    with client:
        futures = client.map(fn, items, key=[f"{name}-{index:05d}-{token}" for index in range(len(items))])
        index_of = {future.key: index for index, future in enumerate(futures)}
        for done in as_completed(futures, loop=client.loop):
            if done.status != "error":
                continue
            index = index_of[done.key]
            item = items[index]
            try:
                done.result()
            except KilledWorker as exc:
                client.cancel(futures)
                raise WorkerLostError(
                    f"executor.address={address!r}: {name}() on {describe_item(item, index)}: the Dask "
                    "worker running it died (killed, over its memory limit, or crashed by this or another "
                    "task) and the scheduler gave up rerunning it (distributed.scheduler.allowed-failures). "
                    f"{exc}"
                ) from exc
            except Exception as exc:
                client.cancel(futures)
                exc.add_note(_failure_note(fn, item, index, f"on the Dask cluster at {address}"))
                raise
        return client.gather(futures)
