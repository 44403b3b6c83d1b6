"""infra/ without Docker or Kubernetes: every file parses, and names, ports, URLs, the bucket, the work pool
and the pinned versions agree across compose, the Dockerfile, the Kubernetes files, the docs and the code
they describe (the launcher command, the Prefect job template validation, MLflow's host check)."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.conftest import PROJECT_ROOT, make_params

INFRA = PROJECT_ROOT / "infra"
K8S = INFRA / "k8s"
NAMESPACE = "codemill"
WORK_POOL = "codemill"

COMPOSE_VARIABLE = re.compile(r"\$\$|\$\{(?P<name>\w+)(?::-(?P<default>[^}]*))?\}")


# ---- helpers ---------------------------------------------------------------------------------------


def read_env_file(path: Path) -> dict[str, str]:
    """``NAME=value`` lines of an env file (comments and blank lines skipped)."""
    pairs = [
        line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#")
    ]
    return {name.strip(): value.strip() for name, value in pairs}


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's interpolation of ``${NAME}``, ``${NAME:-default}`` and ``$$``, applied to every string."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match["name"], match["default"] or "")

    return COMPOSE_VARIABLE.sub(substitute, value)


def compose_raw_text() -> str:
    return (INFRA / "compose.yaml").read_text()


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """compose.yaml as docker compose sees it with the settings of .env.example."""
    return interpolate(yaml.safe_load(compose_raw_text()), read_env_file(INFRA / ".env.example"))


def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def flag_value(command: list[str], flag: str) -> str:
    """The argument after ``flag`` in an argv list."""
    assert flag in command, f"{flag} missing from {command}"
    return command[command.index(flag) + 1]


def as_argv(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def published_ports(service: dict[str, Any]) -> dict[int, int]:
    """container port -> host port of a compose service's ``ports`` (``[ip:]host:container``)."""
    pairs = [entry.rsplit(":", 2)[-2:] for entry in service.get("ports", [])]
    return {int(container): int(host) for host, container in pairs}


def env_of(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment", {})
    assert isinstance(environment, dict), "environment as a mapping"
    return {key: str(value) for key, value in environment.items()}


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of infra/Dockerfile, continuation lines joined, comments dropped."""
    lines = [
        line for line in (INFRA / "Dockerfile").read_text().splitlines() if not line.lstrip().startswith("#")
    ]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    instructions = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            instructions.append((keyword.upper(), " ".join(rest.split())))
    return instructions


def dockerfile_stages() -> dict[str, str]:
    """Build target name -> base image (ARG defaults substituted)."""
    args = {}
    stages = {}
    for keyword, rest in dockerfile_instructions():
        if keyword == "ARG" and "=" in rest and not stages:
            name, value = rest.split("=", 1)
            args[name] = value
        if keyword == "FROM":
            parts = re.split(r"\s+AS\s+", rest, flags=re.IGNORECASE)
            image, target = parts[0], parts[1] if len(parts) > 1 else f"stage{len(stages)}"
            stages[target] = re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], image)
    return stages


def constraint_versions() -> dict[str, str]:
    """Package (lowercase) -> pinned version from constraints.txt."""
    pins = {}
    for line in (PROJECT_ROOT / "constraints.txt").read_text().splitlines():
        if "==" in line:
            name, version = line.split("==", 1)
            pins[name.strip().lower()] = version.strip()
    return pins


def k8s_documents(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((K8S / name).read_text()) if doc]


def k8s_object(name: str, kind: str, object_name: str | None = None) -> dict[str, Any]:
    matches = [
        doc
        for doc in k8s_documents(name)
        if doc["kind"] == kind and object_name in (None, doc["metadata"]["name"])
    ]
    assert len(matches) == 1, f"{name}: expected one {kind} {object_name or ''}"
    return matches[0]


def k8s_container(name: str, kind: str, object_name: str) -> dict[str, Any]:
    """The first container of a Deployment's or Job's pod template."""
    return k8s_object(name, kind, object_name)["spec"]["template"]["spec"]["containers"][0]


def worker_values() -> dict[str, Any]:
    return yaml.safe_load((K8S / "prefect-worker-values.yaml").read_text())


def server_values() -> dict[str, Any]:
    return yaml.safe_load((K8S / "prefect-server-values.yaml").read_text())


def base_job_template() -> dict[str, Any]:
    return json.loads(worker_values()["worker"]["config"]["baseJobTemplate"]["configuration"])


def variable_defaults(template: dict[str, Any]) -> dict[str, Any]:
    properties = template["variables"]["properties"]
    return {name: spec["default"] for name, spec in properties.items() if "default" in spec}


def rendered_pod(template: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """The Job's pod spec as Prefect renders it from the variables' defaults (and ``overrides``)."""
    from prefect.utilities.templating import apply_values

    configuration = apply_values(template["job_configuration"], {**variable_defaults(template), **overrides})
    return configuration["job_manifest"]["spec"]["template"]["spec"]


def memory_bytes(quantity: str) -> int:
    """Kubernetes/Dask memory quantity ('8Gi', '8GiB', '512Mi') in bytes."""
    match = re.fullmatch(r"(\d+)\s*([KMGT])i(?:B)?", quantity)
    assert match, f"unsupported memory quantity {quantity!r}"
    return int(match[1]) * 1024 ** "KMGT".index(match[2]) * 1024


def allowed_hosts(argv: list[str]) -> list[str]:
    return flag_value(argv, "--allowed-hosts").split(",")


def postgres_databases() -> set[str]:
    return set(re.findall(r"CREATE DATABASE (\w+)", (INFRA / "postgres-init.sql").read_text(), re.IGNORECASE))


# ---- every file parses -----------------------------------------------------------------------------


def test_every_yaml_and_json_file_parses() -> None:
    found = [*INFRA.rglob("*.yaml"), *INFRA.rglob("*.yml"), *INFRA.rglob("*.json")]
    files = sorted(path for path in found if "node_modules" not in path.parts)  # npm's installed packages
    assert {path.relative_to(INFRA).as_posix() for path in files} >= {
        "compose.yaml",
        "k8s/prefect-server-values.yaml",
        "k8s/prefect-worker-values.yaml",
        "k8s/mlflow.yaml",
        "k8s/dask-cluster.yaml",
        "k8s/shared.yaml",
    }
    for path in files:
        documents = list(yaml.safe_load_all(path.read_text()))
        assert any(documents), f"{path} is empty"
    assert set(base_job_template()) == {"job_configuration", "variables"}


def test_kubernetes_manifests_are_complete_and_in_the_namespace() -> None:
    for name in ("mlflow.yaml", "dask-cluster.yaml", "shared.yaml"):
        for document in k8s_documents(name):
            assert document["apiVersion"] and document["kind"], name
            assert document["metadata"]["name"], name
            assert document["metadata"]["namespace"] == NAMESPACE, f"{name}: {document['metadata']['name']}"


# ---- compose ---------------------------------------------------------------------------------------


def test_compose_variables_are_all_in_env_example_with_the_same_defaults() -> None:
    documented = read_env_file(INFRA / ".env.example")
    used = {(m["name"], m["default"]) for m in COMPOSE_VARIABLE.finditer(compose_raw_text()) if m["name"]}
    assert used, "compose.yaml uses no settings"
    for name, default in used:
        assert name in documented, f"${{{name}}} is not in .env.example"
        assert default == documented[name], f"${{{name}}}: compose default {default!r} != .env.example"
    assert len(documented["MINIO_ROOT_PASSWORD"]) >= 8, "MinIO refuses passwords under 8 characters"


def test_compose_services_dependencies_and_healthchecks(compose: dict[str, Any]) -> None:
    svc = services(compose)
    assert set(svc) == {
        "postgres",
        "minio",
        "minio-init",
        "prefect-server",
        "mlflow",
        "mlflow-init",
        "worker",
        "serve",
    }
    one_shot = {"minio-init", "mlflow-init"}
    for name, service in svc.items():
        if name in one_shot:
            assert service["restart"] == "no", name
        else:
            assert service["healthcheck"]["test"], f"{name} has no healthcheck"
        for dependency, rule in service.get("depends_on", {}).items():
            assert dependency in svc, f"{name} depends on unknown {dependency}"
            expected = "service_completed_successfully" if dependency in one_shot else "service_healthy"
            assert rule["condition"] == expected, f"{name} -> {dependency}"
    assert set(svc["worker"]["depends_on"]) >= {"prefect-server", "mlflow-init", "minio-init"}


def test_worker_reaches_prefect_mlflow_and_minio_where_they_listen(compose: dict[str, Any]) -> None:
    svc = services(compose)
    worker = env_of(svc["worker"])

    prefect_api = urlsplit(worker["PREFECT_API_URL"])
    server_command = as_argv(svc["prefect-server"]["command"])
    assert prefect_api.hostname == "prefect-server" and prefect_api.path == "/api"
    assert prefect_api.port == int(flag_value(server_command, "--port"))
    assert prefect_api.port in published_ports(svc["prefect-server"])
    assert flag_value(server_command, "--host") == "0.0.0.0"

    mlflow_command = as_argv(svc["mlflow"]["command"])
    for client in ("worker", "mlflow-init"):
        tracking = urlsplit(env_of(svc[client])["MLFLOW_TRACKING_URI"])
        assert tracking.hostname == "mlflow", client
        assert tracking.port == int(flag_value(mlflow_command, "--port")), client
    assert int(flag_value(mlflow_command, "--port")) in published_ports(svc["mlflow"])

    minio_port = int(flag_value(as_argv(svc["minio"]["command"]), "--address").lstrip(":"))
    endpoints = {worker["AWS_ENDPOINT_URL"], worker["MLFLOW_S3_ENDPOINT_URL"]}
    endpoints.add(env_of(svc["mlflow"])["MLFLOW_S3_ENDPOINT_URL"])
    endpoints.update(re.findall(r"mc alias set \w+ (\S+)", svc["minio-init"]["command"][0]))
    assert endpoints == {f"http://minio:{minio_port}"}
    assert env_of(svc["mlflow"])["AWS_ACCESS_KEY_ID"] == env_of(svc["minio"])["MINIO_ROOT_USER"]
    assert worker["AWS_SECRET_ACCESS_KEY"] == env_of(svc["minio"])["MINIO_ROOT_PASSWORD"]


def test_mlflow_accepts_the_host_names_its_clients_use(compose: dict[str, Any]) -> None:
    from mlflow.server.security_utils import is_allowed_host_header

    svc = services(compose)
    hosts = allowed_hosts(as_argv(svc["mlflow"]["command"]))
    for client in ("worker", "mlflow-init"):
        assert is_allowed_host_header(hosts, urlsplit(env_of(svc[client])["MLFLOW_TRACKING_URI"]).netloc)
    assert is_allowed_host_header(hosts, "localhost:5000")  # the published port, from a browser
    assert not is_allowed_host_header(hosts, "attacker.example:5000")


def test_one_bucket_for_minio_mlflow_and_the_docs(compose: dict[str, Any]) -> None:
    svc = services(compose)
    bucket = env_of(svc["minio-init"])["S3_BUCKET"]
    assert '"local/$S3_BUCKET"' in svc["minio-init"]["command"][0]
    artifacts = urlsplit(flag_value(as_argv(svc["mlflow"]["command"]), "--artifacts-destination"))
    assert (artifacts.scheme, artifacts.hostname, artifacts.path) == ("s3", bucket, "/mlflow")
    k8s_args = k8s_container("mlflow.yaml", "Deployment", "mlflow")["args"]
    assert flag_value(k8s_args, "--artifacts-destination") == f"s3://{bucket}/mlflow"
    readme = (INFRA / "README.md").read_text()
    assert f"s3://{bucket}/mlflow" in readme and f"s3://{bucket}/dvc" in readme


def test_postgres_holds_both_backends(compose: dict[str, Any]) -> None:
    svc = services(compose)
    postgres = env_of(svc["postgres"])
    prefect_db = urlsplit(env_of(svc["prefect-server"])["PREFECT_API_DATABASE_CONNECTION_URL"])
    mlflow_db = urlsplit(flag_value(as_argv(svc["mlflow"]["command"]), "--backend-store-uri"))
    assert prefect_db.scheme == "postgresql+asyncpg" and mlflow_db.scheme == "postgresql"
    for url in (prefect_db, mlflow_db):
        assert (url.hostname, url.port) == ("postgres", 5432)
        assert (url.username, url.password) == (postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"])
    assert prefect_db.path == f"/{postgres['POSTGRES_DB']}"
    assert mlflow_db.path.lstrip("/") in postgres_databases()
    assert any(
        mount.startswith("./postgres-init.sql:/docker-entrypoint-initdb.d/")
        for mount in svc["postgres"]["volumes"]
    )


def test_mlflow_init_creates_the_projects_experiment(compose: dict[str, Any]) -> None:
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    compose_init = services(compose)["mlflow-init"]
    k8s_init = k8s_container("mlflow.yaml", "Job", "mlflow-init")
    k8s_env = {item["name"]: item["value"] for item in k8s_init["env"]}
    assert env_of(compose_init)["CODEMILL_EXPERIMENT"] == k8s_env["CODEMILL_EXPERIMENT"]
    assert k8s_env["CODEMILL_EXPERIMENT"] == params["tracking"]["experiment"]
    assert compose_init["command"] == k8s_init["args"], "the same get-or-create command in both"
    assert "mlflow experiments create" in k8s_init["args"][0]


def test_worker_polls_the_pool_of_prefect_yaml_on_the_gpus(compose: dict[str, Any]) -> None:
    worker = services(compose)["worker"]
    command = as_argv(worker["command"])
    assert command[:3] == ["prefect", "worker", "start"]
    assert flag_value(command, "--pool") == WORK_POOL and flag_value(command, "--type") == "process"
    healthcheck_port = env_of(worker)["PREFECT_WORKER_WEBSERVER_PORT"]
    assert "--with-healthcheck" in command and f"localhost:{healthcheck_port}/health" in str(
        worker["healthcheck"]
    )
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any(device["driver"] == "nvidia" and "gpu" in device["capabilities"] for device in devices)
    assert worker["shm_size"] and worker["ulimits"]["memlock"] == -1
    assert worker["working_dir"] == "/opt/codemill" and "..:/opt/codemill" in worker["volumes"]

    assert worker_values()["worker"]["config"]["workPool"] == WORK_POOL
    prefect_yaml = PROJECT_ROOT / "prefect.yaml"
    if not prefect_yaml.exists():
        pytest.skip("prefect.yaml does not exist yet")
    deployments = yaml.safe_load(prefect_yaml.read_text())["deployments"]
    assert deployments and {item["work_pool"]["name"] for item in deployments} == {WORK_POOL}


def test_images_and_build_targets_agree(compose: dict[str, Any]) -> None:
    svc = services(compose)
    stages = dockerfile_stages()
    for name, target in (("worker", "worker"), ("mlflow", "mlflow"), ("mlflow-init", "mlflow")):
        build = svc[name]["build"]
        assert build["target"] == target and target in stages, name
        assert (INFRA / build["context"] / build["dockerfile"]).resolve() == INFRA / "Dockerfile"
    worker_image, mlflow_image = svc["worker"]["image"], svc["mlflow"]["image"]
    assert svc["mlflow-init"]["image"] == mlflow_image

    template_image = variable_defaults(base_job_template())["image"]
    dask = k8s_object("dask-cluster.yaml", "DaskCluster")["spec"]
    dask_images = {
        dask["worker"]["spec"]["containers"][0]["image"],
        dask["scheduler"]["spec"]["containers"][0]["image"],
    }
    assert {template_image, *dask_images} == {worker_image}
    mlflow_images = {
        k8s_container("mlflow.yaml", "Deployment", "mlflow")["image"],
        k8s_container("mlflow.yaml", "Job", "mlflow-init")["image"],
    }
    assert mlflow_images == {mlflow_image}


def test_pinned_versions_match_the_project() -> None:
    pins = constraint_versions()
    stages = dockerfile_stages()
    assert stages["mlflow"] == f"ghcr.io/mlflow/mlflow:v{pins['mlflow']}"
    assert compose_raw_text().count(f"codemill-mlflow:{pins['mlflow']}") == 1  # the shared image anchor
    prefect = pins["prefect"]
    assert f"image: prefecthq/prefect:{prefect}-python3.11" in compose_raw_text()
    assert server_values()["global"]["prefect"]["image"]["prefectTag"] == f"{prefect}-python3.11"
    assert worker_values()["worker"]["image"]["prefectTag"] == f"{prefect}-python3.11-kubernetes"


# ---- Dockerfile ------------------------------------------------------------------------------------


def test_dockerfile_pins_torch_as_the_makefile_and_installs_with_the_constraints() -> None:
    instructions = dockerfile_instructions()
    makefile_torch = re.search(r"torch==([\w.]+)", (PROJECT_ROOT / "Makefile").read_text())[1]
    pyproject_torch = re.search(r'"torch==([\w.]+)"', (PROJECT_ROOT / "pyproject.toml").read_text())[1]
    arg_torch = dict(rest.split("=", 1) for keyword, rest in instructions if keyword == "ARG" and "=" in rest)
    assert arg_torch["TORCH_VERSION"] == makefile_torch == pyproject_torch

    runs = [rest for keyword, rest in instructions if keyword == "RUN"]
    assert any("torch==${TORCH_VERSION}" in run and "pip install" in run for run in runs)
    install = next(run for run in runs if "pip install -c" in run and "-e ." in run)
    filtered = re.search(r"grep -v '(\^torch==)' constraints\.txt > (\S+)", install)
    assert filtered and f"pip install -c {filtered[2]} -e ." in install
    # The filter drops exactly the CPU torch pin: everything else (deepspeed included) installs as pinned.
    lines = (PROJECT_ROOT / "constraints.txt").read_text().splitlines()
    kept = [line for line in lines if not re.match(filtered[1], line)]
    assert len(lines) - len(kept) == 1 and any(line.startswith("deepspeed==") for line in kept)
    copies = " ".join(rest for keyword, rest in instructions if keyword == "COPY")
    assert "constraints.txt" in copies and "pyproject.toml" in copies

    worker_base = dockerfile_stages()["worker"]
    assert worker_base.startswith("nvidia/cuda:") and "cudnn-devel" in worker_base
    assert any("python3.11" in run and "pdsh" in run for run in runs)
    entrypoint = [json.loads(rest) for keyword, rest in instructions if keyword == "ENTRYPOINT"]
    command = json.loads([rest for keyword, rest in instructions if keyword == "CMD"][-1])
    assert entrypoint[-1][0].endswith("tini")  # runs any command: the Kubernetes job template passes its own
    assert command[:3] == ["prefect", "worker", "start"] and flag_value(command, "--pool") == WORK_POOL


def test_build_context_keeps_the_code_and_drops_environments_and_data() -> None:
    patterns = [
        line.strip()
        for line in (INFRA / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def ignored(path: str) -> bool:
        return any(fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/") for pattern in patterns)

    for path in (
        ".venv/bin/python",
        "data/clean/part-00000.parquet",
        "models/pretrain/model.safetensors",
        "mlflow.db",
        ".git/HEAD",
        "infra/.env",
    ):
        assert ignored(path), f"{path} would be sent to the docker build"
    for path in (
        "pyproject.toml",
        "constraints.txt",
        "README.md",
        "components/train/worker.py",
        "flows/pipeline.py",
        "params.yaml",
        "dvc.yaml",
    ):
        assert not ignored(path), f"{path} would be missing from the image"


# ---- Kubernetes ------------------------------------------------------------------------------------


def test_worker_chart_talks_to_the_server_chart() -> None:
    server, worker = server_values(), worker_values()["worker"]
    assert worker["apiConfig"] == "selfHostedServer" and worker["config"]["type"] == "kubernetes"
    api = urlsplit(worker["selfHostedServerApiConfig"]["apiUrl"])
    assert api.hostname == server["fullnameOverride"] and api.path == "/api"
    assert api.port == server["service"]["port"] == server["service"]["targetPort"]
    assert server["postgresql"]["enabled"] is False and server["secret"] == {
        "create": False,
        "name": "prefect-db",
    }


def test_work_pool_job_template_is_valid_for_prefect() -> None:
    from jsonschema import Draft202012Validator
    from prefect.server.schemas.actions import WorkPoolCreate
    from prefect.utilities.schema_tools.validation import is_valid_schema, validate

    template = base_job_template()
    Draft202012Validator.check_schema(template["variables"])
    is_valid_schema(template["variables"])
    # The server's own check: every {{ placeholder }} of the job configuration is a declared variable.
    WorkPoolCreate(name=WORK_POOL, type="kubernetes", base_job_template=template)
    assert validate(variable_defaults(template), template["variables"]) == []
    assert validate({"gpus": -1}, template["variables"]) != []


def test_work_pool_pods_request_gpus_from_the_gpus_variable() -> None:
    template = base_job_template()
    pod = rendered_pod(template)
    assert pod["restartPolicy"] == "Never"
    container = pod["containers"][0]
    assert container["name"] == "prefect-job"  # the Kubernetes worker fills in the first container
    default_gpus = variable_defaults(template)["gpus"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == default_gpus == 1
    assert container["resources"]["requests"]["nvidia.com/gpu"] == default_gpus
    eight = rendered_pod(template, gpus=8)["containers"][0]["resources"]
    assert eight["limits"]["nvidia.com/gpu"] == eight["requests"]["nvidia.com/gpu"] == 8
    assert any(toleration["key"] == "nvidia.com/gpu" for toleration in pod["tolerations"])
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    assert {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}["dshm"] == "/dev/shm"

    claim = k8s_object("shared.yaml", "PersistentVolumeClaim")
    assert volumes["workspace"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert "ReadWriteMany" in claim["spec"]["accessModes"]
    config_map = k8s_object("shared.yaml", "ConfigMap")["metadata"]["name"]
    assert {"configMapRef": {"name": config_map}} in container["envFrom"]
    assert variable_defaults(template)["namespace"] == NAMESPACE


def test_cluster_services_match_the_shared_addresses() -> None:
    shared = k8s_object("shared.yaml", "ConfigMap")["data"]
    service = k8s_object("mlflow.yaml", "Service", "mlflow")
    deployment = k8s_object("mlflow.yaml", "Deployment", "mlflow")
    container = k8s_container("mlflow.yaml", "Deployment", "mlflow")

    tracking = urlsplit(shared["MLFLOW_TRACKING_URI"])
    assert tracking.hostname == service["metadata"]["name"]
    (port,) = service["spec"]["ports"]
    assert tracking.port == port["port"] == int(flag_value(container["args"], "--port"))
    assert port["targetPort"] in {p["name"] for p in container["ports"]}
    assert {p["containerPort"] for p in container["ports"]} == {tracking.port}
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert shared["AWS_ENDPOINT_URL"] == shared["MLFLOW_S3_ENDPOINT_URL"]

    from mlflow.server.security_utils import is_allowed_host_header

    hosts = allowed_hosts(container["args"])
    for host in (tracking.netloc, f"mlflow.{NAMESPACE}.svc.cluster.local:{tracking.port}"):
        assert is_allowed_host_header(hosts, host), host
    init_env = k8s_container("mlflow.yaml", "Job", "mlflow-init")["env"]
    assert {"name": "MLFLOW_TRACKING_URI", "value": shared["MLFLOW_TRACKING_URI"]} in init_env


def test_dask_cluster_scheduler_address_and_worker_memory() -> None:
    cluster = k8s_object("dask-cluster.yaml", "DaskCluster")
    name, spec = cluster["metadata"]["name"], cluster["spec"]
    scheduler = spec["scheduler"]
    ports = {p["name"]: p for p in scheduler["service"]["ports"]}
    container_ports = {p["name"]: p["containerPort"] for p in scheduler["spec"]["containers"][0]["ports"]}
    assert ports["tcp-comm"]["port"] == container_ports["tcp-comm"] == 8786
    assert scheduler["service"]["selector"]["dask.org/cluster-name"] == name
    address = f"tcp://{name}-scheduler:{ports['tcp-comm']['port']}"  # the operator's Service name
    for doc in (INFRA / "README.md", K8S / "dask-cluster.yaml"):
        assert f"executor.address: {address}" in doc.read_text(), doc

    worker = spec["worker"]["spec"]["containers"][0]
    assert worker["args"][:2] == ["dask", "worker"] and flag_value(worker["args"], "--nthreads") == "1"
    limit = memory_bytes(worker["resources"]["limits"]["memory"])
    assert memory_bytes(flag_value(worker["args"], "--memory-limit")) == limit
    assert memory_bytes(worker["resources"]["requests"]["memory"]) == limit


# ---- multi-node docs and the code they describe ----------------------------------------------------


def test_hostfile_example_parses_as_a_deepspeed_hostfile() -> None:
    from deepspeed.launcher.runner import fetch_hostfile

    hosts = fetch_hostfile(str(INFRA / "hostfile.example"))
    assert hosts is not None and len(hosts) >= 2
    assert len(set(hosts.values())) == 1 and next(iter(hosts.values())) >= 1


def test_multi_node_doc_matches_the_launcher_command() -> None:
    from components.params.training import TrainConfig
    from components.stage_runner import StageIO
    from components.train.launch import launcher_command

    doc = (PROJECT_ROOT / "docs" / "multi-node.md").read_text()
    keys = ("num_gpus", "num_nodes", "hostfile", "master_port")
    assert set(keys) <= set(TrainConfig.model_fields)
    params = make_params(train={"num_gpus": 8, "num_nodes": 2, "hostfile": "hostfile", "master_port": 29500})
    io = StageIO({"tokens": "data/tokenize"}, "models/pretrain")
    command = launcher_command(params.stage_config("pretrain"), "p.json", io)
    for key in keys:
        flag = f"--{key}"
        assert flag_value(command, flag) == str(getattr(params.train, key))
        assert f"`train.{key}` | `{flag} " in doc, f"docs/multi-node.md: train.{key} -> {flag}"
    for flag in ("--module", "--no_local_rank"):
        assert flag in command and flag in doc
    assert command[command.index("--no_local_rank") + 1] == "components.train.worker"
    assert "-m components.train.worker --stage pretrain --job-json" in doc


def test_multi_node_doc_states_what_deepspeed_forwards() -> None:
    from deepspeed.launcher import runner

    doc = (PROJECT_ROOT / "docs" / "multi-node.md").read_text()
    sentence = re.search(r"Only variables whose names start with (.+?) are\s+exported", doc, re.S)
    assert sentence, "docs/multi-node.md: the exported-variable sentence"
    documented = set(re.findall(r"`(\w+)`", sentence[1]))
    assert documented == {*runner.EXPORT_ENVS, "NCCL"}  # NCCL: the CUDA accelerator's export_envs()
    assert f"`{runner.DEEPSPEED_ENVIRONMENT_NAME}` file" in doc
    # DeepSpeed reads it on the launching machine, from the home directory and the working directory.
    home_and_cwd = [str(Path.home()), "."]
    assert home_and_cwd == runner.DEEPSPEED_ENVIRONMENT_PATHS
    assert "the home directory or the project root" in " ".join(doc.split())


def test_readme_addresses_match_the_published_ports(compose: dict[str, Any]) -> None:
    svc = services(compose)
    readme = (INFRA / "README.md").read_text()
    expected = {
        "Prefect": published_ports(svc["prefect-server"])[4200],
        "MLflow": published_ports(svc["mlflow"])[5000],
        "MinIO": published_ports(svc["minio"])[9001],
    }
    for name, port in expected.items():
        assert f"{name} http://127.0.0.1:{port}" in readme, name
