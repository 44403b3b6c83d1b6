"""The Dask executor on a LocalCluster of 2 worker processes started here (one per module).

- ``map_shards`` with ``executor.address``: results in input order, computed on the workers; a task's
  exception reaches the stage with its shard named; an unreachable scheduler is a clear StageError.
- ingest, curate, dedup (its LSH and union-find steps as cluster tasks) and clean write byte-identical
  shards to the local executor's; tokenize (its scan and encode steps as cluster tasks) writes
  byte-identical token files.
- A worker killed mid-task: the stage fails with WorkerLostError, or Dask reruns the task on another
  worker when its allowed-failures permit; the output is then either absent/unchanged or complete.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import sysconfig
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from distributed import Client, LocalCluster, WorkerPlugin, get_task_stream

from components import executor
from components.errors import StageError
from components.executor import WorkerLostError, map_shards
from components.params import ExecutorConfig, Params
from components.report import StageReport
from components.stage_runner import call_stage
from tests.conftest import make_params, write_files

pytestmark = pytest.mark.slow

STAGES = ["ingest", "curate", "dedup", "clean"]
STDLIB_FILES = ["bisect.py", "heapq.py", "fnmatch.py", "shlex.py", "textwrap.py", "glob.py", "sched.py"]
STDLIB_FILES += ["queue.py", "numbers.py", "copy.py", "colorsys.py", "stat.py", "string.py", "keyword.py"]


# ----------------------------------------------------------------- per-item functions run on the workers


@dataclass(frozen=True)
class Job:
    """A test item named like a stage's shard task."""

    shard: str
    value: int = 0
    marker: str = ""


def double(job: Job) -> tuple[int, int]:
    """Twice the value, and the process that computed it."""
    time.sleep(0.02)
    return 2 * job.value, os.getpid()


def fail_on_bad(job: Job) -> int:
    """Raise for the item whose shard is named ``bad``."""
    if "bad" in job.shard:
        raise ValueError(f"cannot parse {job.value}")
    return job.value


def raise_stage_error(job: Job) -> int:
    """A stage's own clean error, raised on a worker."""
    raise StageError(f"{job.shard}: missing column(s) content")


def exit_on_kill(job: Job) -> int:
    """Kill the worker process running the item named ``kill`` (only once if it has a marker file)."""
    if job.shard == "kill" and not (job.marker and os.path.exists(job.marker)):
        if job.marker:
            Path(job.marker).touch()
        os._exit(1)
    return job.value


class KillOnTask(WorkerPlugin):
    """Kill the worker when it starts a task whose key starts with ``prefix``, once per ``marker`` file."""

    def __init__(self, prefix: str, marker: str):
        self.prefix = prefix
        self.marker = marker

    def transition(self, key: object, start: str, finish: str, **kwargs: object) -> None:
        """Called by the worker on every task state change."""
        if finish == "executing" and str(key).startswith(self.prefix) and not os.path.exists(self.marker):
            Path(self.marker).touch()
            os._exit(1)


def _set_allowed_failures(count: int, dask_scheduler: object = None) -> None:
    dask_scheduler.allowed_failures = count  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    """A client of a LocalCluster: 2 worker processes of 1 thread, 2 GiB each."""
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, memory_limit="2GiB"
        ) as cluster,
        Client(cluster) as dask_client,
    ):
        yield dask_client


@pytest.fixture
def allowed_failures(client: Client) -> Iterator[Callable[[int], None]]:
    """Set the scheduler's ``allowed-failures`` (reruns after a worker death); restores 3 and 2 workers."""

    def set_count(count: int) -> None:
        client.run_on_scheduler(_set_allowed_failures, count)

    yield set_count
    set_count(3)
    client.wait_for_workers(2, timeout=120)


def cluster_config(client: Client) -> ExecutorConfig:
    """Executor settings that send the work to the test cluster."""
    return ExecutorConfig(address=client.scheduler.address)


def stage_params(corpus: Path, address: str | None, work_dir: Path | None = None) -> Params:
    """A small local corpus in small shards; the local executor is one process."""
    return make_params(
        ingest={"sources": [{"kind": "local", "paths": [str(corpus)]}]},
        curate={"holdout_fraction": 0.0},  # every copy reaches dedup (a small fork would be held out)
        data={"shard_bytes": 60_000},
        executor={"workers": 1, "address": address, "work_dir": str(work_dir) if work_dir else None},
    )


def run_stage_fn(stage: str, params: Params, inputs: list[str], output: Path) -> StageReport:
    """Run one data stage's logic (no tracking); returns its report."""
    return call_stage(importlib.import_module(f"components.{stage}").STAGE, params, inputs, str(output))


def shard_hashes(directory: Path) -> dict[str, str]:
    """sha256 of every file of an output directory."""
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(directory.iterdir())}


def tree_hashes(directory: Path) -> dict[str, str]:
    """sha256 of every file under ``directory`` (recursively), by relative path."""
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Standard-library files in one repo, exact and near copies of half of them in two forks."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files: dict[str, str] = {}
    for index, name in enumerate(STDLIB_FILES):
        text = (stdlib / name).read_text(encoding="utf-8")
        files[f"lib/{name}"] = text
        if index % 2 == 0:
            files[f"fork_exact/{name}"] = text
            files[f"fork_near/{name}"] = text.replace("def ", "def  ", 1) + "\n# forked\n"
    return write_files(tmp_path_factory.mktemp("corpus"), files)


@pytest.fixture(scope="module")
def local_run(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The four data stages with the local executor: ``<root>/<stage>``."""
    root = tmp_path_factory.mktemp("local")
    params = stage_params(corpus, None)
    previous: list[str] = []
    for stage in STAGES:
        run_stage_fn(stage, params, previous, root / stage)
        previous = [str(root / stage)]
    return root


# --------------------------------------------------------------------------------------------------- tests


def test_map_shards_runs_on_the_workers_in_input_order(client: Client) -> None:
    jobs = [Job(f"part-{index:05d}.parquet", index) for index in range(12)]
    results = map_shards(double, jobs, cluster_config(client))
    assert [value for value, _ in results] == [2 * index for index in range(12)]
    worker_pids = set(client.run(os.getpid).values())
    assert {pid for _, pid in results} <= worker_pids and os.getpid() not in worker_pids
    assert map_shards(double, [], cluster_config(client)) == []


def test_a_task_exception_reaches_the_stage_with_its_shard_named(client: Client) -> None:
    jobs = [Job("s3://b/part-00000.parquet", 1), Job("s3://b/bad/part-00001.parquet", 2)]
    with pytest.raises(ValueError, match="cannot parse 2") as caught:
        map_shards(fail_on_bad, jobs, cluster_config(client))
    assert any(
        "fail_on_bad() failed on s3://b/bad/part-00001.parquet" in note for note in caught.value.__notes__
    )
    with pytest.raises(StageError) as stage_error:  # a stage's own error keeps its type and message
        map_shards(raise_stage_error, [Job("x/part-00007.parquet")], cluster_config(client))
    assert str(stage_error.value) == "x/part-00007.parquet: missing column(s) content"


def test_unreachable_scheduler_is_a_clear_stage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(executor, "CONNECT_TIMEOUT_S", 1)
    with pytest.raises(StageError, match=r"executor.address='tcp://127.0.0.1:9': cannot connect"):
        map_shards(double, [Job("a")], ExecutorConfig(address="tcp://127.0.0.1:9"))


def test_worker_killed_mid_task_fails_clearly_or_is_retried(
    client: Client, allowed_failures: Callable[[int], None], tmp_path: Path
) -> None:
    allowed_failures(0)
    with pytest.raises(WorkerLostError, match=r"exit_on_kill\(\) on kill: the Dask worker running it died"):
        map_shards(exit_on_kill, [Job("kill", 2)], cluster_config(client))

    client.wait_for_workers(2, timeout=120)
    allowed_failures(3)
    marker = tmp_path / "killed-once"
    jobs = [Job("a", 1), Job("kill", 2, str(marker)), Job("c", 3)]
    assert map_shards(exit_on_kill, jobs, cluster_config(client)) == [1, 2, 3]
    assert marker.exists(), "the worker running 'kill' was not killed"


def test_data_stages_on_dask_write_the_same_bytes_as_the_local_executor(
    client: Client, corpus: Path, local_run: Path, tmp_path: Path
) -> None:
    params = stage_params(corpus, client.scheduler.address, work_dir=tmp_path / "scratch")
    previous: list[str] = []
    for stage in STAGES:
        if stage == "dedup":
            with get_task_stream(client=client) as stream:
                report = run_stage_fn(stage, params, previous, tmp_path / stage)
            assert report.drops["exact_duplicate"] > 0 and report.drops["near_duplicate"] > 0
            ran = {str(task["key"]).split("-")[0] for task in stream.data}
            assert {"shard_features", "lsh_candidates", "pair_similarities", "connected_components"} <= ran
            assert {"write_kept_rows"} <= ran
        else:
            run_stage_fn(stage, params, previous, tmp_path / stage)
        previous = [str(tmp_path / stage)]
        local = shard_hashes(local_run / stage)
        assert len(local) >= 3, f"{stage}: expected several shards"
        assert shard_hashes(tmp_path / stage) == local, stage
    assert list((tmp_path / "scratch").iterdir()) == []  # dedup's scratch directory is removed


def test_worker_killed_mid_stage_never_leaves_a_partial_output(
    client: Client, allowed_failures: Callable[[int], None], local_run: Path, corpus: Path, tmp_path: Path
) -> None:
    params = stage_params(corpus, client.scheduler.address, work_dir=tmp_path / "scratch")
    output = tmp_path / "out" / "dedup"
    inputs = [str(local_run / "curate")]

    def run_killing(marker: str) -> None:
        client.register_plugin(KillOnTask("write_kept_rows-", str(tmp_path / marker)), name="killer")
        try:
            run_stage_fn("dedup", params, inputs, output)
        finally:
            client.unregister_worker_plugin("killer")
        assert (tmp_path / marker).exists(), "no worker was killed"

    # No retries: the stage fails naming the task; no output, no staging directory, no scratch left.
    allowed_failures(0)
    with pytest.raises(WorkerLostError, match=r"write_kept_rows\(\) on .*part-0000\d\.parquet"):
        run_killing("kill-1")
    assert list((tmp_path / "out").iterdir()) == [] and list((tmp_path / "scratch").iterdir()) == []

    # Retries allowed: the task reruns on the other worker and the output is complete and identical.
    client.wait_for_workers(2, timeout=120)
    allowed_failures(3)
    run_killing("kill-2")
    assert shard_hashes(output) == shard_hashes(local_run / "dedup")

    # A failed rerun leaves the previous complete output as it was.
    client.wait_for_workers(2, timeout=120)
    allowed_failures(0)
    with pytest.raises(WorkerLostError):
        run_killing("kill-3")
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["dedup", "dedup.excluded"]
    assert shard_hashes(output) == shard_hashes(local_run / "dedup")


def test_tokenize_on_dask_writes_the_same_files_as_the_local_executor(
    client: Client, local_run: Path, tmp_path: Path
) -> None:
    clean = [str(local_run / "clean")]
    settings = {"vocab_size": 400, "val_fraction": 0.3, "metadata_rate": 0.5}
    local = make_params(tokenize=settings, executor={"workers": 1})
    run_stage_fn("tokenize", local, clean, tmp_path / "local")
    on_cluster = make_params(tokenize=settings, executor={"address": client.scheduler.address})
    with get_task_stream(client=client) as stream:
        report = run_stage_fn("tokenize", on_cluster, clean, tmp_path / "dask")
    assert {"scan_shard", "encode_shard"} <= {str(task["key"]).split("-")[0] for task in stream.data}
    assert report.metrics["tokens.train"] > 0 and report.metrics["tokens.val"] > 0
    local_files = tree_hashes(tmp_path / "local")
    assert {"train.bin", "val.bin", "index.json", "tokenizer/tokenizer.json"} <= set(local_files)
    assert tree_hashes(tmp_path / "dask") == local_files
