"""Training engine pieces without a launch: params, model, AdamW groups, schedules, FLOPs/MFU, data mix,
checkpoint bookkeeping, launcher command and process-group handling."""

from __future__ import annotations

import itertools
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest
import torch

from components.anneal import MixedBatches, high_quality_ids
from components.params import ParamsError, load_params
from components.params.anneal import HighQualityRule
from components.params.training import ModelConfig, TrainConfig
from components.processes import CommandFailed, run_guarded
from components.shards import write_shard
from components.stage_runner import StageIO
from components.train import checkpoint, metrics
from components.train.engine import deepspeed_config, eval_indices
from components.train.launch import launcher_command
from components.train.model import build_model, count_params, flops_params, hf_config
from components.train.optim import Cosine, LinearToZero, WarmupStableDecay, param_groups, scheduler
from tests.conftest import PROJECT_ROOT, make_params


def _tiny(arch: str, **overrides) -> torch.nn.Module:
    fields = {"arch": arch, "hidden": 32, "layers": 2, "heads": 4, "intermediate": 64, "seq_len": 16}
    fields["kv_heads"] = 1 if arch == "llama" else None
    config = ModelConfig(**{**fields, **overrides})
    return build_model(hf_config(config, vocab_size=100, eos_id=0))


# --- params -------------------------------------------------------------------------------------------


def test_default_training_params_load() -> None:
    params = load_params(PROJECT_ROOT / "params.yaml")
    assert params.model.arch == "llama" and params.train.precision == "fp32"
    assert params.pretrain.schedule in {"wsd", "cosine"}


@pytest.mark.parametrize(
    ("section", "values", "message"),
    [
        ("model", {"arch": "gpt2", "kv_heads": 1}, "gpt2 has no grouped-query attention"),
        ("model", {"hidden": 100, "heads": 8}, "must be divisible by model.heads"),
        ("model", {"heads": 4, "kv_heads": 3}, "must be divisible by model.kv_heads"),
        ("train", {"zero_stage": 4}, "train.zero_stage"),
        ("train", {"betas": [0.9]}, "betas must be two numbers"),
        ("pretrain", {"warmup": 500, "steps": 100}, "must be smaller than pretrain.steps"),
        ("anneal", {"hq_fraction": 1.5}, "anneal.hq_fraction"),
    ],
)
def test_bad_training_params_fail_naming_the_key(section: str, values: dict, message: str) -> None:
    with pytest.raises(ParamsError, match=message):
        make_params(**{section: values})


def test_h100_profile_is_a_valid_overlay_of_a_real_model_size() -> None:
    params = load_params(PROJECT_ROOT / "params.yaml", overlays=[PROJECT_ROOT / "infra/profiles/h100.yaml"])
    assert (params.train.precision, params.train.zero_stage, params.model.seq_len) == ("bf16", 2, 2048)
    with torch.device("meta"):
        model = build_model(hf_config(params.model, params.tokenize.vocab_size, eos_id=0))
    assert 125e6 <= count_params(model) <= 350e6


# --- model --------------------------------------------------------------------------------------------


def test_llama_from_params_has_multi_query_attention_and_expected_size() -> None:
    model = _tiny("llama")
    assert model.config.num_key_value_heads == 1 and model.config.hidden_act == "silu"
    d, inner, layers, vocab, head = 32, 64, 2, 100, 8
    per_layer = d * d * 2 + d * head * 2 + 3 * d * inner + 2 * d  # q,o + k,v (1 kv head) + SwiGLU + norms
    assert count_params(model) == layers * per_layer + d + 2 * vocab * d  # + final norm, embed, lm_head


# --- optimizer groups and schedules -------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_adamw_groups_exclude_biases_and_norms_from_weight_decay(arch: str) -> None:
    model = _tiny(arch)
    decay, no_decay = param_groups(model, weight_decay=0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(param): name for name, param in model.named_parameters()}
    no_decay_names = {names[id(param)] for param in no_decay["params"]}
    decay_names = {names[id(param)] for param in decay["params"]}
    assert no_decay_names and all(("norm" in n or "ln_" in n or n.endswith("bias")) for n in no_decay_names)
    assert all(n.endswith("weight") and "norm" not in n and "ln_" not in n for n in decay_names)
    assert len(decay_names) + len(no_decay_names) == len(names)


def test_wsd_warms_up_holds_then_decays_to_min_lr() -> None:
    schedule = WarmupStableDecay(lr=1.0, min_lr=0.1, warmup=10, steps=100, decay_fraction=0.2)
    assert schedule(0) == pytest.approx(1 / 11) and schedule(10) == 1.0
    assert schedule(79) == 1.0 and schedule(90) == pytest.approx(0.55)
    assert schedule(100) == pytest.approx(0.1)
    assert WarmupStableDecay(lr=1.0, min_lr=0.1, warmup=0, steps=100, decay_fraction=0.0)(100) == 1.0


def test_cosine_ends_at_min_lr() -> None:
    schedule = Cosine(lr=2.0, min_lr=0.2, warmup=4, steps=20)
    assert schedule(4) == pytest.approx(2.0) and schedule(12) == pytest.approx(1.1) and schedule(20) == 0.2


def test_anneal_schedule_starts_at_final_pretrain_lr_and_ends_at_zero() -> None:
    final_lr = WarmupStableDecay(lr=3e-3, min_lr=3e-4, warmup=30, steps=300, decay_fraction=0.1)(300)
    schedule = LinearToZero(start_lr=final_lr, steps=60)
    values = [schedule(step) for step in range(61)]
    assert values[0] == final_lr == pytest.approx(3e-4) and values[-1] == 0.0
    assert all(a > b for a, b in itertools.pairwise(values))
    assert values[30] == pytest.approx(final_lr / 2)


def test_lambda_scheduler_sets_the_scheduled_lr_on_the_optimizer() -> None:
    model = torch.nn.Linear(4, 4)
    optimizer = torch.optim.AdamW(param_groups(model, 0.1), lr=1.0)
    schedule = LinearToZero(start_lr=0.5, steps=4)
    lr_scheduler = scheduler(optimizer, schedule)
    seen = []
    for _ in range(4):
        seen.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        lr_scheduler.step()
    assert seen == [[0.5, 0.5], [0.375, 0.375], [0.25, 0.25], [0.125, 0.125]]
    assert optimizer.param_groups[0]["lr"] == 0.0


# --- FLOPs and MFU ------------------------------------------------------------------------------------


def test_flops_per_token_of_gpt2_124m_matches_nanogpt() -> None:
    from transformers import AutoModelForCausalLM, GPT2Config

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(GPT2Config())  # 124M: 12 layers, 768 wide, 1024 context
    # nanoGPT's N: every parameter but the position embedding (the token embedding is the tied LM head).
    n = 12 * (12 * 768**2 + 13 * 768) + 50257 * 768 + 2 * 768
    assert flops_params(model) == n == 123_653_376
    flops = metrics.flops_per_token(n, layers=12, hidden=768, seq_len=1024)
    assert flops == 6 * n + 12 * 12 * 768 * 1024
    # nanoGPT's A100 example: 1 device at 312 TFLOP/s peak; 100k tokens/s -> 0.2741 MFU.
    assert metrics.mfu(100_000, flops, 1, metrics.peak_flops("NVIDIA A100-SXM4-40GB")) == pytest.approx(
        100_000 * flops / 312e12
    )


def test_llama_untied_head_counts_in_flops_but_embedding_lookup_does_not() -> None:
    model = _tiny("llama")
    assert flops_params(model) == count_params(model) - 100 * 32


@pytest.mark.parametrize(
    ("name", "tflops"),
    [
        ("NVIDIA H100 80GB HBM3", 989.0),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H200", 989.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA L40S", 362.0),
        ("NVIDIA L4", 121.0),
        ("Some Future GPU", None),
    ],
)
def test_peak_flops_table_matches_device_names(name: str, tflops: float | None) -> None:
    assert metrics.peak_flops(name) == (tflops * 1e12 if tflops else None)
    assert metrics.peak_flops(name, override_tflops=500.0) == 500e12


def test_mfu_needs_a_known_peak() -> None:
    assert metrics.mfu(1000.0, 1e9, 1, None) is None
    assert metrics.mfu(1000.0, 1e9, 2, 1e12) == pytest.approx(0.5)


# --- DeepSpeed config and launcher --------------------------------------------------------------------


def test_deepspeed_config_follows_train_params() -> None:
    config = deepspeed_config(
        TrainConfig(precision="bf16", zero_stage=2, micro_batch=4, grad_accum=8, grad_clip=0.5)
    )
    assert config["train_micro_batch_size_per_gpu"] == 4 and config["gradient_accumulation_steps"] == 8
    assert config["bf16"] == {"enabled": True} and config["zero_optimization"]["stage"] == 2
    assert config["gradient_clipping"] == 0.5
    assert deepspeed_config(TrainConfig())["bf16"] == {"enabled": False}


def test_launcher_command_runs_the_worker_module_with_topology() -> None:
    params = make_params(train={"num_gpus": 8, "num_nodes": 2, "hostfile": "hosts.txt", "master_port": 29600})
    job = params.stage_config("pretrain")
    cmd = launcher_command(job, "p.json", StageIO({"tokens": "data/tokenize"}, "models/pretrain"))
    assert cmd[1:3] == ["-m", "deepspeed.launcher.runner"]
    text = " ".join(cmd)
    topology = "--num_gpus 8 --num_nodes 2 --hostfile hosts.txt --master_port 29600"
    assert f"{topology} --module --no_local_rank components.train.worker --stage pretrain" in text
    assert text.endswith("--job-json p.json --input data/tokenize --output models/pretrain")
    single = " ".join(launcher_command(make_params().stage_config("pretrain"), "p.json", StageIO({}, "out")))
    assert "--num_nodes" not in single and "--hostfile" not in single and "--master_port " in single


def test_guarded_command_forwards_the_exit_code() -> None:
    with pytest.raises(CommandFailed) as failed:
        run_guarded([sys.executable, "-c", "raise SystemExit(7)"], capture=False)
    assert failed.value.returncode == 7


def test_terminating_the_stage_terminates_the_launched_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    child = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    stage = (
        "import os, sys\n"
        "from components.processes import run_guarded\n"
        f"run_guarded([sys.executable, '-c', {child!r}], capture=False)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", stage], cwd=PROJECT_ROOT)
    deadline = time.time() + 30
    while not (pid_file.exists() and pid_file.read_text()) and time.time() < deadline:
        time.sleep(0.1)
    child_pid = int(pid_file.read_text())
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) != 0
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            os.kill(child_pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(child_pid, signal.SIGKILL)
        pytest.fail("the launched process outlived the terminated stage")


# --- anneal data mix ----------------------------------------------------------------------------------


class _Labelled:
    """A batch source whose batches say where they came from: (source, index, rank)."""

    def __init__(self, source: int) -> None:
        self.source = source

    def batch(self, step: int, micro_batch: int, rank: int, world_size: int) -> torch.Tensor:
        return torch.tensor([[self.source, step, rank]] * micro_batch)


def test_mixed_batches_take_the_exact_share_and_read_each_source_in_order() -> None:
    mix = MixedBatches(base=_Labelled(0), high_quality=_Labelled(1), hq_fraction=0.25)
    rows = [mix.batch(step, 2, rank=1, world_size=2)[0].tolist() for step in range(40)]
    hq = [index for source, index, _ in rows if source == 1]
    base = [index for source, index, _ in rows if source == 0]
    assert len(hq) == 10 and hq == list(range(10)) and base == list(range(30))
    assert all(rank == 1 for _, _, rank in rows)
    assert rows == [mix.batch(step, 2, rank=1, world_size=2)[0].tolist() for step in range(40)]


def test_high_quality_rule_selects_from_curate_signals(tmp_path: Path) -> None:
    rows = [
        {"id": f"d{i}", "quality_score": i / 10, "has_docstring": i % 2 == 0, "has_tests": i >= 8}
        for i in range(10)
    ] + [{"id": "val-doc", "quality_score": 1.0, "has_docstring": True, "has_tests": True}]
    rows[9]["has_docstring"] = None  # non-Python documents carry nulls
    write_shard(pa.Table.from_pylist(rows), str(tmp_path / "part-00000.parquet"))
    train_ids = [f"d{i}" for i in range(10)]
    quantile = HighQualityRule(min_quality_quantile=0.5)
    assert high_quality_ids(str(tmp_path), quantile, train_ids) == ["d5", "d6", "d7", "d8", "d9"]
    documented = HighQualityRule(min_quality_quantile=0.5, require_docstring=True)
    assert high_quality_ids(str(tmp_path), documented, train_ids) == ["d6", "d8"]
    tested = HighQualityRule(min_quality_quantile=0.0, require_docstring=True, require_tests=True)
    assert high_quality_ids(str(tmp_path), tested, train_ids) == ["d8"]


# --- checkpoint bookkeeping ---------------------------------------------------------------------------


@pytest.fixture
def single_rank_group(tmp_path: Path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _fake_checkpoint(root: Path, step: int, fingerprint: str) -> None:
    tag = root / checkpoint.step_tag(step)
    tag.mkdir(parents=True)
    (tag / checkpoint.STATE_FILE).write_text(f'{{"step": {step}, "fingerprint": "{fingerprint}"}}')


def test_resume_picks_latest_complete_checkpoint_and_drops_a_cut_off_save(
    tmp_path: Path, single_rank_group: None
) -> None:
    root = tmp_path / "ckpt"
    _fake_checkpoint(root, 100, "same")
    _fake_checkpoint(root, 200, "same")
    (root / checkpoint.LATEST).write_text(checkpoint.step_tag(100))  # the save of step 200 never finished
    assert checkpoint.resumable_tag(root, "same", rank=0) == "step00000100"
    assert sorted(path.name for path in root.iterdir()) == ["latest", "step00000100"]


def test_checkpoint_of_other_params_is_not_resumed(tmp_path: Path, single_rank_group: None) -> None:
    root = tmp_path / "ckpt"
    _fake_checkpoint(root, 100, "before")
    (root / checkpoint.LATEST).write_text(checkpoint.step_tag(100))
    assert checkpoint.resumable_tag(root, "after", rank=0) is None
    assert not root.exists()
    assert checkpoint.resumable_tag(tmp_path / "never-written", "after", rank=0) is None


def test_rng_states_round_trip() -> None:
    state = checkpoint.rng_state()
    expected = (torch.rand(3), math.floor(1e6 * __import__("random").random()))
    torch.rand(5)
    checkpoint.set_rng_state(state)
    assert torch.equal(torch.rand(3), expected[0])
    assert math.floor(1e6 * __import__("random").random()) == expected[1]


def test_throughput_leaves_paused_time_out() -> None:
    throughput = metrics.Throughput(tokens_per_step=1000, device=torch.device("cpu"))
    time.sleep(0.05)
    throughput.step()
    with throughput.paused():
        time.sleep(0.3)
    rate = throughput.lap()
    assert 1000 / 0.3 < rate <= 1000 / 0.05
    assert throughput.tokens == 1000 and throughput.mean == pytest.approx(rate)


def test_eval_sequences_spread_over_the_split_and_split_between_ranks() -> None:
    train = TrainConfig(micro_batch=2, eval_batches=2)
    ranks = [eval_indices(100, train, rank, world=2) for rank in range(2)]
    assert ranks == [[0, 25, 50, 75], [12, 37, 62, 87]]
    small = [eval_indices(5, train, rank, world=2) for rank in range(2)]
    assert small == [[0, 2], [1, 3]]  # at most what the split holds, same count on every rank


def test_long_context_profile_is_8k_with_activation_checkpointing_and_the_same_tokens_per_step() -> None:
    base = load_params(PROJECT_ROOT / "params.yaml", overlays=[PROJECT_ROOT / "infra/profiles/h100.yaml"])
    params = load_params(
        PROJECT_ROOT / "params.yaml", overlays=[PROJECT_ROOT / "infra/profiles/long-context.yaml"]
    )
    assert params.model.seq_len == 8192 and params.train.activation_checkpointing
    assert params.model.attn_implementation in ("sdpa", "flash_attention_2")
    tokens = params.train.micro_batch * params.train.grad_accum * params.model.seq_len
    assert tokens == base.train.micro_batch * base.train.grad_accum * base.model.seq_len
    with torch.device("meta"):
        model = build_model(hf_config(params.model, params.tokenize.vocab_size, eos_id=0))
    assert model.config.max_position_embeddings == 8192 and 125e6 <= count_params(model) <= 350e6


def test_gpu_smoke_profile_fits_an_eight_minute_window_with_pretraining_most_of_it() -> None:
    """The profile's sizing (infra/profiles/gpu-smoke.yaml): pretraining takes 1-4 of the 8 minutes at
    20-40% MFU of an H200's ~790 TFLOP/s sustained bf16, and the chain evaluates HumanEval only."""
    params = load_params(
        PROJECT_ROOT / "params.yaml", overlays=[PROJECT_ROOT / "infra/profiles/gpu-smoke.yaml"]
    )
    train, model_config = params.train, params.model
    assert train.precision == "bf16" and train.num_gpus == 1 and model_config.attn_implementation == "sdpa"
    assert [benchmark.name for benchmark in params.evaluate.benchmarks] == ["humaneval"]
    assert params.evaluate.batch_size == "auto" and not params.evaluate.sampling
    with torch.device("meta"):
        model = build_model(hf_config(model_config, params.tokenize.vocab_size, eos_id=0))
    n_params = count_params(model)
    assert 100e6 <= n_params <= 170e6
    flops = metrics.flops_per_token(
        flops_params(model), model_config.layers, model_config.hidden, model_config.seq_len
    )
    tokens = params.pretrain.steps * train.micro_batch * train.grad_accum * model_config.seq_len
    sustained = 790e12
    seconds_at = {mfu: tokens * flops / (sustained * mfu) for mfu in (0.2, 0.4)}
    assert seconds_at[0.4] >= 60 and seconds_at[0.2] <= 6 * 60, seconds_at
    assert params.anneal.steps <= params.pretrain.steps // 5


def test_attention_kernel_and_activation_checkpointing_change_memory_not_results() -> None:
    from components.errors import StageError
    from components.train.model import check_attention

    model = _tiny("llama")
    assert model.config._attn_implementation == "sdpa"
    eager = build_model(model.config, "eager")
    eager.load_state_dict(model.state_dict())
    assert eager.config._attn_implementation == "eager"
    ids = torch.randint(0, 100, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, eager(ids).logits, rtol=1e-4, atol=1e-5)

    def grads(checkpointing: bool) -> list[torch.Tensor]:
        model.zero_grad()
        model.train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model(ids, labels=ids).loss.backward()
        model.gradient_checkpointing_disable()
        return [param.grad.clone() for param in model.parameters()]

    for plain, recomputed in zip(grads(False), grads(True), strict=True):
        torch.testing.assert_close(plain, recomputed)
    if not torch.cuda.is_available():
        with pytest.raises(StageError, match=r"model\.attn_implementation"):
            check_attention("flash_attention_2")
