"""``codemill serve`` against real clients: the ``openai`` SDK, ``huggingface_hub.InferenceClient``, 16
concurrent clients, a promotion under load, an int8 variant, attribution. One MLflow server and one
``codemill serve`` process (a real uvicorn server on 127.0.0.1) for the module, stopped by PID.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
import requests
import yaml

from components.attribution import AttributionIndex, build
from components.errors import StageError
from components.evaluate.generate import fim_prompt
from components.params.attribution import AttributionJob
from components.params.serve import ServeConfig, ServeLimits
from components.register import registry as reg
from components.serve.app import create_app
from components.serve.engine import TIMEOUT, Busy, Decoding, Engine, Row
from components.serve.handling import VERSION_HEADER, Server
from components.serve.models import ModelSlot, ModelSource, load_path, load_version, weight_bytes
from components.serve.quantize import TAG_METHOD, TAG_PARENT, quantize_version
from components.shards import make_document, write_shard
from components.train.launch import free_port
from tests.conftest import PROJECT_ROOT, wait_http

pytestmark = pytest.mark.slow

MODEL = "servetest"
NAME = f"codemill-{MODEL}"
POLL_S = 0.5
#: How soon after a promotion every answer comes from the new version (poll + load + a batch).
SWITCH_BOUND_S = 15.0


def tiny_checkpoint(path: Path, seed: int) -> Path:
    """A tiny Llama with the project's tokenizer (FIM tokens, chat template), saved HF-style."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from components.tokens.tokenizer import to_transformers, train_tokenizer

    texts = [f"def add_{i}(a, b):\n    return a + b * {i}\n" for i in range(300)]
    tokenizer = to_transformers(train_tokenizer(texts, 400, 2))
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def register_checkpoint(path: Path) -> str:
    """Log and register a checkpoint as a new version of NAME; returns the version."""
    import mlflow

    from components.register.publish import log_model

    mlflow.set_experiment("codemill")
    with mlflow.start_run(run_name="register"):
        return log_model(path, NAME, 16)


CORPUS = {
    ("octo/math", "src/matrix.py", "mit"): "\n".join(
        f"def multiply_rows_{i}(matrix, factor):\n    return [[value * factor + {i} for value in row] "
        f"for row in matrix]\n"
        for i in range(12)
    ),
    ("octo/text", "lib/words.py", "apache-2.0"): "\n".join(
        f"def count_words_{i}(text):\n    counts = {{}}\n    for word in text.split():\n"
        f"        counts[word] = counts.get(word, {i}) + 1\n    return counts\n"
        for i in range(12)
    ),
}
NEW_CODE = "class Stack:\n    def __init__(self):\n        self.items = []\n    def push(self, item):\n" * 3


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("checkpoints")
    return tiny_checkpoint(root / "v1", seed=1), tiny_checkpoint(root / "v2", seed=2)


@pytest.fixture(scope="module")
def versions(mlflow_server: str, checkpoints: tuple[Path, Path]) -> tuple[str, str]:
    """Two registered versions; the first is the champion."""
    first, second = (register_checkpoint(path) for path in checkpoints)
    reg.promote(NAME, first, "first", "test", force=True)
    return first, second


@pytest.fixture(scope="module")
def attribution_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("attribution")
    docs = [
        make_document(repo, path, "python", content, license=lic)
        for (repo, path, lic), content in CORPUS.items()
    ]
    (root / "clean").mkdir()
    import pyarrow as pa

    write_shard(pa.Table.from_pylist(docs), str(root / "clean" / "part-00000.parquet"))
    build(AttributionJob(), str(root / "clean"), str(root / "attribution"))
    return root / "attribution"


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory,
    mlflow_server: str,
    versions: tuple[str, str],
    attribution_index: Path,
) -> Iterator[str]:
    """``codemill serve`` for NAME@champion in its own process; yields its base URL."""
    root = tmp_path_factory.mktemp("serve")
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params["model"]["name"] = MODEL
    params["serve"].update({"poll_s": POLL_S, "max_batch_size": 8, "max_in_flight": 256})
    params["serve"]["limits"].update({"max_tokens": 64, "max_prompt_tokens": 200})
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    port = free_port()
    command = [sys.executable, "-m", "components.cli", "--params", str(root / "params.yaml"), "serve"]
    command += ["--port", str(port), "--attribution", str(attribution_index)]
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server}
    env.pop("CODEMILL_API_KEY", None)
    with open(root / "serve.log", "wb") as log:
        proc = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", proc, timeout_s=180)
        children = psutil.Process(proc.pid).children(recursive=True)
        yield url
    finally:
        if proc.poll() is not None:
            pytest.fail(
                f"codemill serve exited with {proc.returncode}: {(root / 'serve.log').read_text()[-3000:]}"
            )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM), (root / "serve.log").read_text()[-3000:]
        assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]


def openai_client(url: str) -> object:
    from openai import OpenAI

    return OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)


def test_openai_sdk_completions_fim_streaming_and_chat(served: str, checkpoints: tuple[Path, Path]) -> None:
    client = openai_client(served)
    (model,) = client.models.list().data
    assert model.id == NAME
    prompt = "def add_3(a, b):\n"
    plain = client.completions.create(model=NAME, prompt=prompt, max_tokens=12, temperature=0)
    text = plain.choices[0].text
    assert plain.choices[0].finish_reason in ("stop", "length") and plain.usage.completion_tokens >= 1
    # streaming greedy decoding gives the same text, in pieces
    pieces = [
        chunk.choices[0].text
        for chunk in client.completions.create(
            model=NAME, prompt=prompt, max_tokens=12, temperature=0, stream=True
        )
    ]
    assert len(pieces) >= 2 and "".join(pieces) == text
    # a suffix makes the FIM prompt: <fim_prefix>PREFIX<fim_suffix>SUFFIX<fim_middle>
    from transformers import AutoTokenizer

    infill = client.completions.create(
        model=NAME, prompt=prompt, suffix="    return a\n", max_tokens=8, temperature=0
    )
    tokenizer = AutoTokenizer.from_pretrained(checkpoints[0])  # both versions share it
    expected_tokens = len(
        tokenizer(fim_prompt(prompt, "    return a\n"), add_special_tokens=False)["input_ids"]
    )
    assert infill.usage.prompt_tokens == expected_tokens
    assert infill.usage.prompt_tokens > plain.usage.prompt_tokens
    # n and several prompts
    many = client.completions.create(
        model=NAME, prompt=["def a", "def b"], n=2, max_tokens=4, temperature=0.8, seed=1
    )
    assert sorted(choice.index for choice in many.choices) == [0, 1, 2, 3]
    chat = client.chat.completions.create(
        model=NAME, messages=[{"role": "user", "content": "Write add."}], max_tokens=8, temperature=0
    )
    assert chat.choices[0].message.role == "assistant" and isinstance(chat.choices[0].message.content, str)
    streamed = client.chat.completions.create(
        messages=[{"role": "user", "content": "Write add."}],
        max_tokens=8,
        temperature=0,
        stream=True,
        model=NAME,
    )
    content = "".join(chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices)
    assert content == chat.choices[0].message.content


def test_huggingface_hub_inference_client_generates_with_and_without_streaming(
    served: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import InferenceClient, constants

    # The suite runs with HF_HUB_OFFLINE=1 (no hub downloads); this client talks to our server only.
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    client = InferenceClient(model=served, timeout=120)
    prompt = "def add_7(a, b):\n"
    text = client.text_generation(prompt, max_new_tokens=10)
    expected = openai_client(served).completions.create(
        model=NAME, prompt=prompt, max_tokens=10, temperature=0
    )
    assert text == expected.choices[0].text
    streamed = list(client.text_generation(prompt, max_new_tokens=10, stream=True))
    assert "".join(streamed) == text
    detailed = client.text_generation(prompt, max_new_tokens=10, details=True)
    assert detailed.generated_text == text and detailed.details.generated_tokens >= 1
    answer = requests.post(
        f"{served}/generate", json={"inputs": prompt, "parameters": {"max_new_tokens": 10}}
    )
    assert answer.status_code == 200 and answer.json()["generated_text"] == text
    assert answer.headers[VERSION_HEADER]


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/completions", {"prompt": 5}, "prompt"),
        ("/v1/completions", {"prompt": "x", "max_tokens": -1}, "max_tokens"),
        ("/v1/completions", {"prompt": "x", "temperature": -0.5}, "temperature"),
        ("/v1/completions", {"prompt": "x", "top_p": 0}, "top_p"),
        ("/v1/completions", {"prompt": "x", "bogus": 1}, "bogus"),
        ("/v1/completions", {"prompt": "x", "max_tokens": 10_000}, "max_tokens"),
        ("/v1/completions", {"prompt": "def f():\n" * 400}, "prompt"),
        ("/v1/completions", {"prompt": "x", "n": 99}, "n"),
        ("/v1/completions", {"prompt": ["def f():"] * 10_000}, "prompt"),
        ("/v1/completions", {"prompt": "x" * 1_000_000}, "prompt"),
        ("/v1/completions", {"prompt": "x", "max_tokens": "8"}, "max_tokens"),
        ("/v1/completions", {"prompt": "x", "presence_penalty": 1.0}, "presence_penalty"),
        ("/v1/completions", {"max_tokens": 3}, "prompt"),
        ("/v1/chat/completions", {"messages": []}, "messages"),
        ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
        ("/generate", {"inputs": "x", "parameters": {"max_new_tokens": 0}}, "parameters.max_new_tokens"),
        ("/generate", {"inputs": ["x"]}, "inputs"),
        ("/generate", {"inputs": "x", "parameters": {"watermark": True}}, "parameters.watermark"),
        ("/generate", {"inputs": "x", "parameters": {"colour": 1}}, "parameters.colour"),
    ],
)
def test_malformed_bodies_get_a_4xx_naming_the_field(served: str, path: str, body: dict, field: str) -> None:
    answer = requests.post(f"{served}{path}", json=body, timeout=30)
    assert 400 <= answer.status_code < 500, answer.text
    error = answer.json()["error"]
    message = error["message"] if isinstance(error, dict) else error
    assert field in message, message
    if isinstance(error, dict):
        assert error["param"] == field


def test_not_json_and_an_unknown_model_are_refused(served: str) -> None:
    answer = requests.post(f"{served}/v1/completions", data=b"{not json", timeout=30)
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "body"
    answer = requests.post(f"{served}/v1/completions", json={"prompt": "x", "model": "gpt-9"}, timeout=30)
    assert answer.status_code == 404 and answer.json()["error"]["param"] == "model"


def load(
    served: str, clients: int, requests_total: int, during: object = None
) -> list[tuple[float, int, str]]:
    """``requests_total`` completions from ``clients`` threads; ``(finish time, status, version)`` each.
    ``during`` runs in its own thread once a quarter of the requests are answered."""
    results: list[tuple[float, int, str]] = []
    lock = threading.Lock()
    started = threading.Event()

    def one(index: int) -> None:
        session = requests.Session()
        body = {"prompt": f"def add_{index % 50}(a, b):\n", "max_tokens": 8, "temperature": 0}
        try:
            answer = session.post(f"{served}/v1/completions", json=body, timeout=120)
            status, version = answer.status_code, answer.headers.get(VERSION_HEADER, "")
        except requests.RequestException:
            status, version = 0, ""
        with lock:
            results.append((time.monotonic(), status, version))
            if len(results) == requests_total // 4:
                started.set()

    runner = None
    if during is not None:
        runner = threading.Thread(target=lambda: (started.wait(300), during()))
        runner.start()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(requests_total)))
    if runner is not None:
        runner.join(timeout=300)
    return results


def test_sixteen_concurrent_clients_all_answered_and_batched(served: str) -> None:
    before = requests.get(f"{served}/health", timeout=10).json()["batches"]
    results = load(served, clients=16, requests_total=200)
    assert [status for _, status, _ in results] == [200] * 200
    batches = requests.get(f"{served}/health", timeout=10).json()["batches"] - before
    assert batches < 200 / 2, f"{batches} batches for 200 requests: concurrent requests were not batched"


def test_promotion_under_load_switches_versions_with_no_failed_request(
    served: str, versions: tuple[str, str]
) -> None:
    first, second = versions
    assert requests.get(f"{served}/v1/models", timeout=10).json()["data"][0]["version"] == first
    promotion: list[tuple[float, float]] = []  # when the promote call began and returned

    def promote() -> None:
        began = time.monotonic()
        reg.promote(NAME, second, "better", "test", force=True)
        promotion.append((began, time.monotonic()))

    try:
        results = load(served, clients=16, requests_total=300, during=promote)
        ((began, moved),) = promotion
        # The load goes on (16 clients, 32 requests a round) until the new version answers or the bound.
        while (
            not any(version == second for _, _, version in results)
            and time.monotonic() < moved + SWITCH_BOUND_S
        ):
            results += load(served, clients=16, requests_total=32)
        assert {status for _, status, _ in results} == {200}, "a request failed during the switch"
        assert {version for at, _, version in results if at < began} == {first}
        late = [version for at, _, version in results if at > moved + SWITCH_BOUND_S]
        assert set(late) <= {second}
        switched = min((at for at, _, version in results if version == second), default=float("inf"))
        assert switched - moved < SWITCH_BOUND_S, f"no answer from version {second} within {SWITCH_BOUND_S} s"
        assert requests.get(f"{served}/v1/models", timeout=10).json()["data"][0]["version"] == second
    finally:  # leave the champion, and the server, as the module found them
        reg.promote(NAME, first, "restore", "test", force=True)
        served_version(served, first)


def served_version(served: str, expected: str, timeout_s: float = 60) -> None:
    """Wait until the server answers with version ``expected``."""
    deadline = time.monotonic() + timeout_s
    while requests.get(f"{served}/v1/models", timeout=10).json()["data"][0]["version"] != expected:
        assert time.monotonic() < deadline, f"the server did not switch to version {expected}"
        time.sleep(0.2)


def test_attribution_finds_a_verbatim_training_file_and_nothing_for_new_code(
    served: str, attribution_index: Path
) -> None:
    index = AttributionIndex.load(attribution_index)
    ((repo, path, lic), content) = next(iter(CORPUS.items()))
    (top, *_) = index.query(content)
    assert (top.repo, top.path, top.license) == (repo, path, lic) and top.jaccard > 0.9
    assert index.query(NEW_CODE) == []
    answer = requests.post(f"{served}/v1/attribution", json={"snippet": content}, timeout=30).json()
    assert answer["data"][0]["repo"] == repo and answer["data"][0]["path"] == path
    assert (
        requests.post(f"{served}/v1/attribution", json={"snippet": NEW_CODE}, timeout=30).json()["data"] == []
    )
    command = [sys.executable, "-m", "components.cli", "attribute", "-", "--index", str(attribution_index)]
    printed = subprocess.run(
        command, input=content, capture_output=True, text=True, cwd=PROJECT_ROOT, check=True
    )
    assert repo in printed.stdout and path in printed.stdout and lic in printed.stdout


def test_int8_variant_is_registered_smaller_and_answers(versions: tuple[str, str], tmp_path: Path) -> None:
    import mlflow

    first, _ = versions
    variant = quantize_version(NAME, first, "int8", 16, "codemill")
    tags = mlflow.MlflowClient().get_model_version(NAME, variant).tags
    assert tags[TAG_METHOD] == "int8" and tags[TAG_PARENT] == first
    full, small = load_version(NAME, first), load_version(NAME, variant)
    assert small.quantization and "Int8" in small.quantization and full.quantization is None
    assert weight_bytes(small.model) < 0.75 * weight_bytes(full.model)  # linear layers int8, embeddings not
    from fastapi.testclient import TestClient

    slot = ModelSlot(small)
    config = ServeConfig()
    app = create_app(Server(Engine(slot, config), slot, config, ModelSource(f"models:/{NAME}/{variant}")))
    with TestClient(app) as client:
        answer = client.post("/v1/completions", json={"prompt": "def add", "max_tokens": 6, "temperature": 0})
    assert answer.status_code == 200 and answer.headers[VERSION_HEADER] == variant
    assert answer.json()["usage"]["completion_tokens"] >= 1


def rows_for(count: int, max_tokens: int, timeout_s: float) -> list[Row]:
    events: list[tuple[str, object]] = []
    deadline = time.monotonic() + timeout_s
    return [Row("def add", max_tokens, Decoding(), deadline, events.append) for _ in range(count)]


def test_beyond_max_in_flight_is_refused_at_once_and_generation_stops_at_the_deadline(
    checkpoints: tuple[Path, Path],
) -> None:
    slot = ModelSlot(load_path(str(checkpoints[0])))
    config = ServeConfig(max_in_flight=4, max_batch_size=4, limits=ServeLimits(request_timeout_s=0.3))
    engine = Engine(slot, config)  # not started: nothing leaves the queue
    engine.submit(rows_for(3, 8, 60))
    started = time.monotonic()
    with pytest.raises(Busy, match="max_in_flight=4"):
        engine.submit(rows_for(2, 8, 60))
    assert time.monotonic() - started < 0.1
    # a row with a huge budget ends at its deadline, not after its tokens (end tokens taken away, so
    # only the deadline can end it)
    endless = load_path(str(checkpoints[0]))
    endless.model.generation_config.eos_token_id = None
    endless.tokenizer.eos_token = "<fim_pad>"
    engine = Engine(ModelSlot(endless), ServeConfig(max_batch_size=1))
    engine.start()
    try:
        (row,) = rows_for(1, 10_000, 0.5)
        begun = time.monotonic()
        engine.submit([row])
        while not row.finished and time.monotonic() - begun < 30:
            time.sleep(0.05)
        assert row.finish_reason == TIMEOUT and time.monotonic() - begun < 5
        assert len(row.token_ids) < 10_000
        assert engine.in_flight == 0
    finally:
        engine.stop()


def test_an_api_key_is_required_when_set(checkpoints: tuple[Path, Path]) -> None:
    from fastapi.testclient import TestClient

    slot = ModelSlot(load_path(str(checkpoints[0])))
    config = ServeConfig()
    app = create_app(
        Server(Engine(slot, config), slot, config, ModelSource(str(checkpoints[0]))), api_key="s3cret"
    )
    with TestClient(app) as client:
        body = {"prompt": "def", "max_tokens": 2}
        assert client.post("/v1/completions", json=body).status_code == 401
        wrong = client.post("/v1/completions", json=body, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        right = client.post("/v1/completions", json=body, headers={"Authorization": "Bearer s3cret"})
        assert right.status_code == 200
        assert client.get("/health").status_code == 200
    assert json.loads(json.dumps(right.json()))["choices"]


def test_an_align_teacher_behind_the_server_answers_like_the_same_model_in_process(
    served: str, checkpoints: tuple[Path, Path], versions: tuple[str, str]
) -> None:
    from components.align.teacher import EndpointTeacher, LocalTeacher, load_teacher
    from components.benchmarks import Problem
    from components.evaluate.generate import Decoding
    from components.params.teacher import TeacherConfig

    problems = [
        Problem("t", f"t/{i}", "python", f"def add_{i}(a, b):\n", "assert True\n", stop=("\ndef",))
        for i in range(3)
    ]
    teacher = load_teacher(TeacherConfig(endpoint=f"{served}/v1", name=NAME), Path("unused"))
    assert isinstance(teacher, EndpointTeacher)
    served_version(served, versions[0])
    loaded = load_path(str(checkpoints[0]))  # the champion's checkpoint
    in_process = LocalTeacher(loaded.model, loaded.tokenizer)
    assert teacher.answer(problems, False, 8, 0) == in_process.answer(problems, False, 8, 0)
    chat = teacher.answer(problems, True, 6, 0)
    assert len(chat) == 3 and all(isinstance(text, str) for text in chat)
    # Free-form chat (the evol stage's requests), greedy: the same replies through the API as in process.
    requests = ["Write a function that adds two numbers.", "Reverse a list."]
    assert teacher.reply(requests, Decoding(6), 0) == in_process.reply(requests, Decoding(6), 0)
    with pytest.raises(ValueError, match="exactly one"):
        TeacherConfig(model="models/sft", endpoint=f"{served}/v1", name=NAME)
    with pytest.raises(StageError, match="HTTP 404"):
        EndpointTeacher(f"{served}/v1", "not-served").answer(problems[:1], False, 4, 0)
