"""``codemill quantize VERSION --method M``: register a quantized variant of a model version.

The variant is a new version of the same registered model, in the same MLflow transformers layout, so
``codemill serve`` (and ``mlflow models serve``) load it like any other; ``config.json`` carries the
quantization config that ``from_pretrained`` applies on load. Tags: ``quantization.method``,
``quantization.parent_version``, and the parent's ``source_stage``. A variant carries no ``eval.*`` tags
(its scores are its own): evaluate it before promoting it.

Methods:
- ``int8`` (CPU and GPU): int8 weight-only quantization of every linear layer, through torchao
  (``Int8WeightOnlyConfig`` via transformers' ``TorchAoConfig``). Embeddings stay in full precision.
- ``bnb-int8`` / ``bnb-nf4`` (GPU only): bitsandbytes 8-bit / 4-bit NF4 (``BitsAndBytesConfig``); needs
  ``pip install bitsandbytes`` on a CUDA host.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from components.errors import StageError

TAG_METHOD = "quantization.method"
TAG_PARENT = "quantization.parent_version"
METHODS = ("int8", "bnb-int8", "bnb-nf4")


def quantization_config(method: str) -> Any:
    """The transformers quantization config of ``method``."""
    import torch

    if method == "int8":
        from torchao.quantization import Int8WeightOnlyConfig
        from transformers import TorchAoConfig

        return TorchAoConfig(Int8WeightOnlyConfig())
    if method in ("bnb-int8", "bnb-nf4"):
        if not torch.cuda.is_available():
            raise StageError(f"--method {method}: bitsandbytes needs a CUDA GPU (use --method int8 on CPU)")
        from transformers import BitsAndBytesConfig

        if method == "bnb-int8":
            return BitsAndBytesConfig(load_in_8bit=True)
        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
        )
    raise StageError(f"--method: {method!r} is not one of {METHODS}")


def quantized_checkpoint(weights: Path, tokenizer_dir: Path, method: str) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of a Hugging Face checkpoint, quantized with ``method`` as it loads."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(weights, quantization_config=quantization_config(method))
    return model.eval(), AutoTokenizer.from_pretrained(tokenizer_dir)


def quantize_version(name: str, version: str, method: str, max_new_tokens: int, experiment: str) -> str:
    """Quantize version ``version`` of ``name`` with ``method``; returns the new version."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from components.register.publish import log_loaded_model
    from components.register.registry import download_model

    client = mlflow.MlflowClient()
    try:
        parent = client.get_model_version(name, version)
    except MlflowException as exc:
        raise StageError(f"{name} version {version}: not found ({exc.message})") from None
    if parent.tags.get(TAG_METHOD):
        raise StageError(f"{name} version {version} is already quantized ({parent.tags[TAG_METHOD]})")
    with tempfile.TemporaryDirectory(prefix="codemill-quantize-") as scratch:
        dirs = download_model(f"models:/{name}/{version}", scratch)
        model, tokenizer = quantized_checkpoint(*dirs, method)
        mlflow.set_experiment(experiment)
        with mlflow.start_run(run_name=f"quantize-{method}-v{version}"):
            mlflow.log_params({"quantize.method": method, "quantize.parent_version": version})
            new_version = log_loaded_model(model, tokenizer, name, max_new_tokens)
    tags = {TAG_METHOD: method, TAG_PARENT: str(version)}
    if "source_stage" in parent.tags:
        tags["source_stage"] = parent.tags["source_stage"]
    for key, value in tags.items():
        client.set_model_version_tag(name, new_version, key, value)
    return new_version
