"""Sections every stage shares, and the small context a stage gets besides its own section."""

from __future__ import annotations

from pydantic import Field

from components.params.base import StrictModel


class ProjectConfig(StrictModel):
    """Names and seeds shared by every stage."""

    name: str = "codemill"
    seed: int = Field(1234, ge=0)


class TrackingConfig(StrictModel):
    """MLflow conventions (see components/tracking.py)."""

    experiment: str = "codemill"
    #: Used when MLFLOW_TRACKING_URI is unset. Relative sqlite paths resolve against the project root.
    uri: str = "sqlite:///mlflow.db"
    #: Artifact root for a newly created experiment (local folder or s3:// URL).
    artifact_location: str = "mlartifacts"


class ExecutorConfig(StrictModel):
    """How per-shard work is mapped: a local process pool, or a Dask scheduler when ``address`` is set."""

    workers: int = Field(2, ge=1)
    #: A Dask scheduler URL: ``tcp://host:8786`` (also ``tls://``, ``ucx://``, ``inproc://``, ``ws://``).
    address: str | None = Field(None, pattern=r"^(tcp|tls|ucx|inproc|ws|wss)://[^\s/]+$")
    #: Scratch space of multi-step stages (dedup's per-shard MinHash features): a path every worker can
    #: read (shared filesystem or ``s3://``). ``null``: a local temporary directory (the local pool, or a
    #: Dask cluster on this machine).
    work_dir: str | None = None


class OrchestrationConfig(StrictModel):
    """How the Prefect pipeline flow runs the stages (``flows/pipeline.py``)."""

    #: Times a failed stage task is retried (transient failures), and the pause between tries.
    retries: int = Field(0, ge=0)
    retry_delay_s: float = Field(10.0, ge=0)


class DataConfig(StrictModel):
    """Layout of the Parquet shards passed between stages."""

    #: Target uncompressed content bytes per shard; bounds the memory a worker needs.
    shard_bytes: int = Field(8_000_000, gt=0)


class StageContext(StrictModel):
    """What every stage may read besides its own section: seed, executor, shard layout, tracking."""

    project: ProjectConfig = ProjectConfig()
    executor: ExecutorConfig = ExecutorConfig()
    data: DataConfig = DataConfig()
    tracking: TrackingConfig = TrackingConfig()

    @property
    def seed(self) -> int:
        """The project seed."""
        return self.project.seed
