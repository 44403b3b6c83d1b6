"""Register stage end to end against a REAL MLflow tracking server (one per module; ~15 s to start).

register -> aliases -> load ``models:/codemill-<name>@champion``; a worse model gets no alias; promote and
rollback move ``champion`` with who/why tags; the server's own tests are in tests/test_serve.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from components.cli import main as cli_main
from components.params.register import RegisterConfig
from components.register import STAGE
from components.register import registry as reg
from components.report import read_report, write_eval_report
from components.stage_runner import run_stage
from components.tracking import PARENT_RUN_ENV, TAG_OUT_MD5, TAG_STAGE
from tests.conftest import PROJECT_ROOT, make_params

pytestmark = pytest.mark.slow

MODEL = "regtest"
NAME = f"codemill-{MODEL}"
ANNEAL_MD5 = "0123456789abcdef0123456789abcdef.dir"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama (hidden 32, 2 layers) with a byte-level BPE tokenizer trained here, saved HF-style."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = tmp_path_factory.mktemp("models") / "anneal"
    corpus = [f"def add_{i}(a, b):\n    return a + b * {i}\n" for i in range(200)]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=128,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    fast.save_pretrained(path)
    (path / "training.json").write_text(json.dumps({"final_loss": 5.0}))
    return path


@pytest.fixture(scope="module")
def parent_run(mlflow_server: str) -> Iterator[str]:
    """A pipeline parent run with an upstream ``anneal`` stage run tagged with its output md5."""
    import mlflow

    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("codemill").experiment_id
    parent = client.create_run(experiment, run_name="pipeline").info.run_id
    tags = {TAG_STAGE: "anneal", f"{TAG_OUT_MD5}.models/anneal": ANNEAL_MD5, "mlflow.parentRunId": parent}
    upstream = client.create_run(experiment, run_name="anneal", tags=tags).info.run_id
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(PARENT_RUN_ENV, parent)
        yield upstream


def register(
    workdir: Path, model_dir: Path, pass_at_1: float, config: RegisterConfig | None = None
) -> dict[str, object]:
    """Run the register stage (in its MLflow stage run) with an eval report; returns its report."""
    eval_path = workdir / "eval.json"
    write_eval_report(eval_path, {"anneal": {"humaneval.pass_at_1": pass_at_1, "val.bpb": 2.0}}, {})
    config = config or RegisterConfig(candidate="anneal", max_new_tokens=4)
    params = make_params(model={"name": MODEL}, register=config.model_dump())
    report = workdir / "register.json"
    run_stage(STAGE, params, STAGE.resolve([str(model_dir), str(eval_path)], None), str(report))
    return read_report(report)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, parent_run: str) -> Path:
    """A working directory with a dvc.lock recording the upstream anneal output."""
    lock = {"schema": "2.0", "stages": {"anneal": {"outs": [{"path": "models/anneal", "md5": ANNEAL_MD5}]}}}
    (tmp_path / "dvc.lock").write_text(json.dumps(lock))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_register_tags_aliases_and_loads_champion(workdir: Path, model_dir: Path, parent_run: str) -> None:
    import mlflow

    report = register(workdir, model_dir, pass_at_1=0.10)
    details = report["details"]
    assert details["version"] == "1" and details["champion_before"] is None
    assert details["aliases"] == ["challenger", "champion"]  # first version to pass becomes champion
    assert report["metrics"]["gates_passed"] == 1.0 and report["metrics"]["eval.humaneval.pass_at_1"] == 0.10
    assert report["files_in"] >= 4  # config, weights, tokenizer, training.json

    version = mlflow.MlflowClient().get_model_version(NAME, "1")
    assert version.tags["eval.humaneval.pass_at_1"] == "0.1" and version.tags["gates.passed"] == "true"
    assert version.tags["lineage.dvc.models/anneal"] == ANNEAL_MD5
    assert version.tags["lineage.run.anneal"] == parent_run
    assert len(version.tags["lineage.params.sha256"]) == 64 and "lineage.git.commit" in version.tags
    assert version.tags[reg.TAG_ACTION] == "auto" and version.tags[reg.TAG_PREVIOUS] == ""

    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    out = model.predict(["def add(a, b):"], params={"max_new_tokens": 3})
    assert len(out) == 1 and isinstance(out[0], str) and out[0].startswith("def add(a, b):")


def test_worse_model_gets_no_alias_better_one_is_challenger(workdir: Path, model_dir: Path) -> None:
    import mlflow

    worse = register(workdir, model_dir, pass_at_1=0.05)
    assert worse["details"]["aliases"] == [] and worse["metrics"]["gates_passed"] == 0.0
    assert worse["drops"] == {"gate.vs_champion:humaneval.pass_at_1": 1}
    client = mlflow.MlflowClient()
    assert client.get_model_version(NAME, "2").tags["gates.failed"] == "vs_champion:humaneval.pass_at_1"

    better = register(workdir, model_dir, pass_at_1=0.20)
    assert better["details"]["aliases"] == ["challenger"]  # promotion.auto is off: champion stays
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "1"


def test_promote_and_rollback_commands_move_champion(workdir: Path, model_dir: Path) -> None:
    import mlflow

    client = mlflow.MlflowClient()
    params = str(PROJECT_ROOT / "params.yaml")
    common = ["--params", params, "--model", MODEL, "--user", "alice"]
    assert cli_main(["promote", *common, "2", "--reason", "worse model"]) == 2  # failed its gates
    assert cli_main(["promote", *common, "3", "--reason", "pass@1 0.20 > 0.10"]) == 0
    champion = client.get_model_version_by_alias(NAME, "champion")
    assert str(champion.version) == "3"
    assert (champion.tags[reg.TAG_BY], champion.tags[reg.TAG_REASON]) == ("alice", "pass@1 0.20 > 0.10")
    assert champion.tags[reg.TAG_PREVIOUS] == "1"

    assert cli_main(["rollback", *common, "--reason", "bad completions"]) == 0
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "1"
    assert client.get_model_version(NAME, "3").tags[reg.TAG_ROLLED_BACK_REASON] == "bad completions"
    assert client.get_model_version(NAME, "1").tags[reg.TAG_REPLACED] == "3"

    auto = register(
        workdir,
        model_dir,
        pass_at_1=0.30,
        config=RegisterConfig(candidate="anneal", max_new_tokens=4, promotion={"auto": True}),
    )
    assert auto["details"]["aliases"] == ["challenger", "champion"]
