"""S3 against a real endpoint on 127.0.0.1 (moto_server): data stages, DVC remote, MLflow artifact store.

- ingest (a ``files`` source of JSONL + Parquet on S3) -> curate -> dedup (scratch on S3) -> clean with
  every output on ``s3://`` writes the same shard bytes as the same run on local disk;
- ``dvc push`` to an S3 remote, then ``dvc pull`` into a clean clone, restores every output;
- an MLflow server with ``--artifacts-destination s3://…`` stores a model in the bucket and serves it back.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import mlflow
import mlflow.pyfunc
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from components.params import Params
from components.processes import kill_group
from components.report import StageReport
from components.shards import filesystem, list_shards
from components.stage_runner import call_stage, run_stage
from components.tracking import TAG_OUT_MD5, TAG_STAGE, dvc_md5
from tests.conftest import PROJECT_ROOT, make_dvc_project, make_params, run_checked, wait_http

pytestmark = pytest.mark.slow

BUCKET = "codemill"
STAGES = ["ingest", "curate", "dedup", "clean"]
STDLIB_FILES = ["bisect.py", "heapq.py", "fnmatch.py", "shlex.py", "textwrap.py", "glob.py", "sched.py"]
STDLIB_FILES += ["queue.py", "numbers.py", "copy.py", "keyword.py", "colorsys.py", "stat.py", "string.py"]


def corpus_rows() -> list[dict[str, object]]:
    """Standard-library files plus an exact copy and a near copy of some of them in fork repos."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    rows: list[dict[str, object]] = []
    for index, name in enumerate(STDLIB_FILES):
        text = (stdlib / name).read_text(encoding="utf-8")
        rows.append(
            {"repo": "cpython/lib", "path": name, "content": text, "stars": 100, "license": "PSF-2.0"}
        )
        if index % 2 == 0:
            rows.append({"repo": "fork/exact", "path": name, "content": text, "stars": 1, "license": None})
            near = text.replace("def ", "def  ", 1) + "\n# forked\n"
            rows.append({"repo": "fork/near", "path": name, "content": near, "stars": 2, "license": "MIT"})
    return rows


def write_corpus(directory: Path) -> None:
    """Half the rows as JSONL, half as Parquet (the two table formats of a ``files`` source)."""
    rows = corpus_rows()
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "part-a.jsonl", "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows[::2])
    pq.write_table(pa.Table.from_pylist(rows[1::2]), directory / "part-b.parquet")


def stage_params(corpus: str, work_dir: str | None) -> Params:
    """Small shards (several per stage), one process (the moto server shares the 2 cores)."""
    return make_params(
        ingest={"sources": [{"kind": "files", "paths": [corpus]}], "max_bytes": None},
        curate={"holdout_fraction": 0.0},  # every copy reaches dedup
        data={"shard_bytes": 60_000},
        executor={"workers": 1, "work_dir": work_dir},
    )


def run_data_stages(params: Params, root: str, reports: Path, tracked: bool) -> dict[str, StageReport]:
    """ingest -> curate -> dedup -> clean with outputs ``<root>/<stage>``; tracked: through MLflow too."""
    results = {}
    previous: list[str] = []
    for stage in STAGES:
        spec = importlib.import_module(f"components.{stage}").STAGE
        output = f"{root}/{stage}"
        if tracked:
            io = spec.resolve(previous, output)
            results[stage] = run_stage(spec, params, io, str(reports / f"{stage}.json"))
        else:
            results[stage] = call_stage(spec, params, previous, output)
        previous = [output]
    return results


def file_hashes(directory: str) -> dict[str, str]:
    """sha256 of every file under ``directory`` (local or s3://), by path relative to it."""
    fs, root = filesystem(directory)
    root = root.rstrip("/")
    return {
        path[len(root) + 1 :]: hashlib.sha256(fs.cat_file(path)).hexdigest() for path in sorted(fs.find(root))
    }


@pytest.fixture(scope="module")
def bucket(s3_endpoint: str) -> str:
    """The ``codemill`` bucket on the module's moto server."""
    import boto3

    boto3.client("s3").create_bucket(Bucket=BUCKET)
    return BUCKET


def test_data_stages_on_s3_write_the_same_shards_as_on_local_disk(
    tmp_path: Path, bucket: str, mlflow_uri: str
) -> None:
    import s3fs

    local_corpus = tmp_path / "corpus"
    write_corpus(local_corpus)
    s3 = s3fs.S3FileSystem()
    s3.put(str(local_corpus), f"{bucket}/corpus", recursive=True)
    assert sorted(s3.ls(f"{bucket}/corpus")) == [
        f"{bucket}/corpus/part-a.jsonl",
        f"{bucket}/corpus/part-b.parquet",
    ]

    local = run_data_stages(stage_params(str(local_corpus), None), str(tmp_path / "data"), tmp_path, False)
    params = stage_params(f"s3://{bucket}/corpus", f"s3://{bucket}/scratch")
    remote = run_data_stages(params, f"s3://{bucket}/data", tmp_path / "reports", tracked=True)

    assert local["ingest"].files_out == len(corpus_rows())
    assert local["dedup"].drops["exact_duplicate"] > 0 and local["dedup"].drops["near_duplicate"] > 0
    for stage in STAGES:
        local_shards = file_hashes(str(tmp_path / "data" / stage))
        assert len(local_shards) >= 3, f"{stage}: expected several shards"
        assert file_hashes(f"s3://{bucket}/data/{stage}") == local_shards, stage
        assert (remote[stage].files_out, remote[stage].drops) == (local[stage].files_out, local[stage].drops)
    # Nothing left behind: no staging directories next to the outputs (and their exclusion datasets), no
    # dedup scratch files.
    outputs = [f"{bucket}/data/{name}" for stage in STAGES for name in (stage, f"{stage}.excluded")]
    outputs.append(f"{bucket}/data/curate.holdout")
    assert sorted(s3.ls(f"{bucket}/data")) == sorted(outputs)
    assert not s3.exists(f"{bucket}/scratch") or not s3.find(f"{bucket}/scratch")
    # The tracked stage runs wrote their reports and tagged their S3 outputs' digests (the md5 DVC records).
    assert (
        json.loads((tmp_path / "reports" / "clean.json").read_text())["files_out"]
        == remote["clean"].files_out
    )
    client = mlflow.MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name(params.tracking.experiment).experiment_id
    (clean_run,) = client.search_runs([experiment], filter_string=f"tags.`{TAG_STAGE}` = 'clean'")
    digest = clean_run.data.tags[f"{TAG_OUT_MD5}.s3:/{bucket}/data/clean"]
    assert digest == dvc_md5(f"s3://{bucket}/data/clean") == dvc_md5(str(tmp_path / "data" / "clean"))
    assert list_shards(f"s3://{bucket}/data/clean")[0].startswith(f"s3://{bucket}/data/clean/part-")


def test_scratch_arrays_on_s3_read_back_like_local_ones(tmp_path: Path, bucket: str) -> None:
    import numpy as np

    from components.storage import load_array, load_rows, save_array, work_directory

    signatures = np.arange(7 * 5, dtype=np.uint32).reshape(7, 5) * 2_654_435_761
    with pytest.raises(RuntimeError), work_directory(f"s3://{bucket}/scratch", prefix="t-") as scratch:
        assert scratch.startswith(f"s3://{bucket}/scratch/t-")
        save_array(f"{scratch}/sig.npy", signatures)
        save_array(str(tmp_path / "sig.npy"), signatures)
        np.testing.assert_array_equal(load_array(f"{scratch}/sig.npy"), signatures)
        for start, stop in [(0, 7), (2, 5), (6, 9), (7, 9), (3, 3)]:
            remote = load_rows(f"{scratch}/sig.npy", start, stop)
            np.testing.assert_array_equal(remote, load_rows(str(tmp_path / "sig.npy"), start, stop))
            assert remote.shape == signatures[start:stop].shape and remote.dtype == np.uint32
        raise RuntimeError("the stage failed")
    fs, root = filesystem(f"s3://{bucket}/scratch")
    assert not fs.exists(root) or fs.find(root) == []  # removed even though the block failed


def documented_remote_command(bucket_url: str) -> str:
    """The DVC remote command of docs/storage.md, for the given bucket URL."""
    text = (PROJECT_ROOT / "docs" / "storage.md").read_text(encoding="utf-8")
    (command,) = re.findall(r"^(dvc remote add -d storage s3://\S+)$", text, flags=re.MULTILINE)
    return command.replace(command.split()[-1], bucket_url)


def test_dvc_push_then_pull_into_a_clean_clone_restores_every_output(
    tmp_path: Path, bucket: str, _migrated_mlflow_db: Path
) -> None:
    corpus = tmp_path / "corpus"
    write_corpus(corpus)
    project = tmp_path / "project"
    project.mkdir()
    sources = [{"kind": "files", "paths": [str(corpus)]}]
    env = make_dvc_project(
        project,
        params={"ingest": {"sources": sources}, "data": {"shard_bytes": 60_000}, "executor": {"workers": 1}},
        stages=["ingest", "curate", "dedup"],
    )
    shutil.copy(_migrated_mlflow_db, tmp_path / "mlflow.db")
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"

    run_checked(["dvc", "repro"], project, env)
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    outputs = [out["path"] for stage in lock["stages"].values() for out in stage["outs"]]
    # The shard directories and exclusion datasets (DVC-cached, pushed to the remote) and the reports
    # (metrics, kept in git).
    # The sources fingerprint first, and curate's held-out repositories beside its outputs.
    # And each stage's corpus statistics (reports/stats, DVC-cached). DVC lists a stage's outputs sorted.
    kinds = {stage: [("data", ""), ("data", ".excluded"), ("reports", ".json")] for stage in STAGES[:3]}
    kinds["curate"].insert(2, ("data", ".holdout"))
    for stage in STAGES[:3]:
        kinds[stage] += [("reports/stats", ".json"), ("reports/stats", ".png")]
    expected = [f"{kind}/{stage}{ext}" for stage in STAGES[:3] for kind, ext in kinds[stage]]
    assert outputs == ["data/sources.json", "reports/sources.json", *expected]
    before = {out: file_hashes(str(project / out)) for out in outputs}

    command = documented_remote_command(f"s3://{bucket}/dvc")
    run_checked(["bash", "-c", command], project, env)  # the endpoint comes from AWS_ENDPOINT_URL
    run_checked(["git", "add", "-A"], project, env)
    run_checked(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "remote"], project, env)
    pushed = run_checked(["dvc", "push"], project, env)
    assert "pushed" in pushed

    clone = tmp_path / "clone"
    run_checked(["git", "clone", "-q", str(project), str(clone)], tmp_path, env)
    assert not (clone / "data").exists()
    # A machine without AWS_ENDPOINT_URL pins the endpoint in its untracked .dvc/config.local instead.
    clone_env = {name: value for name, value in env.items() if name != "AWS_ENDPOINT_URL"}
    endpoint = env["AWS_ENDPOINT_URL"]
    run_checked(["dvc", "remote", "modify", "--local", "storage", "endpointurl", endpoint], clone, clone_env)
    run_checked(["dvc", "pull"], clone, clone_env)
    assert {out: file_hashes(str(clone / out)) for out in before} == before
    # Only the sources fingerprint is out of date: it is recomputed by every run, by design.
    status = run_checked(["dvc", "status", "--json"], clone, clone_env)
    assert json.loads(status) == {"sources": ["always changed"]}


class Doubler(mlflow.pyfunc.PythonModel):
    """A tiny pyfunc model: doubles every input."""

    def predict(self, context: object, model_input: list[float], params: dict | None = None) -> list[float]:
        """Twice each value."""
        return [2 * value for value in model_input]


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path: Path, bucket: str, s3_endpoint: str, _migrated_mlflow_db: Path) -> Iterator[str]:
    """``mlflow server`` with its artifacts on S3 (MLFLOW_S3_ENDPOINT_URL + keys); yields its URL."""
    shutil.copy(_migrated_mlflow_db, tmp_path / "mlflow.db")
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        f"sqlite:///{tmp_path}/mlflow.db",
    ]
    command += [
        "--artifacts-destination",
        f"s3://{bucket}/mlflow",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    command += ["--workers", "1"]
    env = {name: value for name, value in os.environ.items() if name != "AWS_ENDPOINT_URL"}
    env["MLFLOW_S3_ENDPOINT_URL"] = s3_endpoint
    with open(tmp_path / "server.log", "wb") as log:
        server = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", server, timeout_s=120)
        yield url
    finally:
        kill_group(server.pid)
        server.wait(timeout=10)


def test_mlflow_server_stores_model_artifacts_on_s3_and_serves_them(
    tmp_path: Path, bucket: str, mlflow_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import s3fs

    blob = hashlib.sha256(b"codemill").digest() * 4096  # 128 KiB
    (tmp_path / "blob.bin").write_bytes(blob)
    with monkeypatch.context() as client_env:
        # The client talks to the server only (proxied artifacts): it needs no S3 endpoint or keys.
        for name in (
            "AWS_ENDPOINT_URL",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "MLFLOW_S3_ENDPOINT_URL",
        ):
            client_env.delenv(name, raising=False)
        client_env.setenv("MLFLOW_TRACKING_URI", mlflow_server)
        mlflow.set_tracking_uri(mlflow_server)
        experiment = mlflow.set_experiment("s3-artifacts")
        with mlflow.start_run() as run:
            mlflow.log_artifact(str(tmp_path / "blob.bin"), artifact_path="files")
            info = mlflow.pyfunc.log_model(name="model", python_model=Doubler(), pip_requirements=[])
        served_blob = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="files"))
        served_model = Path(
            mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(tmp_path / "dl"))
        )
        assert mlflow.pyfunc.load_model(info.model_uri).predict([1.0, 2.5]) == [2.0, 5.0]
    mlflow.set_tracking_uri(None)

    assert (served_blob / "blob.bin").read_bytes() == blob
    s3 = s3fs.S3FileSystem()
    (stored_blob,) = [path for path in s3.find(f"{bucket}/mlflow") if path.endswith("/files/blob.bin")]
    assert s3.cat_file(stored_blob) == blob
    assert stored_blob.startswith(f"{bucket}/mlflow/{experiment.experiment_id}/")
    # Every object of the model in the bucket is served back byte for byte (the client adds its own
    # registered_model_meta file when downloading a models:/ URI).
    (mlmodel,) = [
        path for path in s3.find(f"{bucket}/mlflow") if path.endswith(f"{info.model_id}/artifacts/MLmodel")
    ]
    artifacts_root = mlmodel.removesuffix("MLmodel")
    stored = {path.removeprefix(artifacts_root): s3.cat_file(path) for path in s3.find(artifacts_root)}
    assert {"MLmodel", "python_model.pkl"} <= set(stored)
    assert {name: (served_model / name).read_bytes() for name in stored} == stored
