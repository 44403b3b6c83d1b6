"""What the server serves: a model version from the MLflow registry (or a local checkpoint), loaded, and
the slot that holds the current one, swapped atomically when the followed alias moves.

A registered version is what ``mlflow.transformers.log_model`` wrote; the registry's ``download_model``
and ``model_dirs`` find its weights and tokenizer folders. Quantized
variants (``codemill quantize``) are the same layout; their ``config.json`` carries the quantization
config, which ``from_pretrained`` applies on load.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.errors import StageError

log = logging.getLogger("codemill.serve")

MODELS_SCHEME = "models:/"


@dataclass(frozen=True)
class ModelSource:
    """Where the model comes from: ``models:/NAME@ALIAS`` (followed), ``models:/NAME/VERSION`` or a path."""

    uri: str

    @property
    def registered(self) -> bool:
        """A registry URI (else a local checkpoint folder)."""
        return self.uri.startswith(MODELS_SCHEME)

    @property
    def _reference(self) -> str:
        """What follows ``models:/`` (``NAME@ALIAS`` or ``NAME/VERSION``); empty for a path."""
        return self.uri[len(MODELS_SCHEME) :] if self.registered else ""

    @property
    def name(self) -> str:
        """The registered model name, or the folder name of a local checkpoint."""
        if not self.registered:
            return Path(self.uri).name
        return self._reference.split("@")[0].split("/")[0]

    @property
    def alias(self) -> str | None:
        """The alias this source follows (``champion``), or None for a fixed version or a path."""
        reference = self._reference
        return reference.split("@", 1)[1] if "@" in reference else None

    @property
    def fixed_version(self) -> str | None:
        """The version of ``models:/NAME/VERSION``."""
        reference = self._reference
        parts = reference.split("/")
        return parts[1] if len(parts) == 2 and "@" not in reference else None


@dataclass
class LoadedModel:
    """A model ready to generate: which version it is, its weights and tokenizer, its context length."""

    name: str
    version: str
    model: Any
    tokenizer: Any
    quantization: str | None = None
    load_s: float = 0.0

    @property
    def context(self) -> int:
        """Tokens the model attends over (prompt plus generated)."""
        return int(self.model.config.max_position_embeddings)

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` as the server will feed it (no special tokens added)."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])


def load_checkpoint(weights: Path, tokenizer_dir: Path) -> tuple[Any, Any]:
    """``(model, tokenizer)`` from Hugging Face folders, in eval mode, on the GPU when there is one."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else None
    model: Any = AutoModelForCausalLM.from_pretrained(weights, dtype=dtype)
    model = model.to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    return model, tokenizer


def tensor_bytes(tensor: Any) -> int:
    """Bytes a tensor holds; a tensor subclass (torchao's Int8Tensor) counts its inner tensors."""
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    if is_traceable_wrapper_subclass(tensor):
        names, _ = tensor.__tensor_flatten__()
        return sum(tensor_bytes(getattr(tensor, name)) for name in names)
    return tensor.numel() * tensor.element_size()


def weight_bytes(model: Any) -> int:
    """Bytes of the model's parameters and buffers as stored (int8 weights count one byte each)."""
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return sum(tensor_bytes(tensor) for tensor in tensors.values())


def quantization_method(model: Any) -> str | None:
    """The quantization a loaded model carries (``torchao:Int8WeightOnlyConfig``), or None."""
    config = getattr(model.config, "quantization_config", None)
    if config is None:
        return None
    as_dict = config if isinstance(config, dict) else config.to_dict()
    quant_type = as_dict.get("quant_type")
    if isinstance(quant_type, dict):
        quant_type = (quant_type.get("default") or {}).get("_type", quant_type)
    method = as_dict.get("quant_method")
    return f"{getattr(method, 'value', method)}:{quant_type}"


def loaded(name: str, version: str, dirs: tuple[Path, Path], started: float) -> LoadedModel:
    """Load the weights and tokenizer folders ``dirs`` as version ``version`` of ``name``."""
    model, tokenizer = load_checkpoint(*dirs)
    return LoadedModel(
        name, version, model, tokenizer, quantization_method(model), time.monotonic() - started
    )


def load_version(name: str, version: str) -> LoadedModel:
    """Download and load version ``version`` of registered model ``name``."""
    from components.register.registry import download_model

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="codemill-serve-") as scratch:
        return loaded(name, str(version), download_model(f"models:/{name}/{version}", scratch), started)


def load_path(path: str) -> LoadedModel:
    """Load a local checkpoint folder (HF, or a downloaded MLflow model); its version is ``local``."""
    from components.register.registry import model_dirs

    started = time.monotonic()
    folder = Path(path)
    if not folder.is_dir():
        raise StageError(
            f"{path}: no such model folder (give models:/NAME@ALIAS, models:/NAME/VERSION or a path)"
        )
    return loaded(folder.name, "local", model_dirs(folder), started)


def resolve_version(source: ModelSource, client: Any) -> str:
    """The version ``source`` names now (the alias's target, or the fixed version)."""
    if source.fixed_version is not None:
        return source.fixed_version
    try:
        return str(client.get_model_version_by_alias(source.name, source.alias).version)
    except Exception as exc:
        raise StageError(f"{source.uri}: cannot resolve alias ({exc})") from exc


@dataclass
class ModelSlot:
    """The model being served. ``current`` is read once per batch; ``swap`` replaces it atomically, so a
    batch runs on one version from start to end and no request sees a half-loaded model."""

    current: LoadedModel
    swaps: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def swap(self, new: LoadedModel) -> LoadedModel:
        """Serve ``new`` from the next batch on; returns the model it replaced."""
        with self._lock:
            old, self.current = self.current, new
            self.swaps += 1
        return old


class AliasFollower(threading.Thread):
    """Polls the registry every ``poll_s``; when the alias names another version, loads it beside the
    served one and swaps it in. A failed load is logged and retried at the next poll; the old version
    keeps serving."""

    def __init__(
        self,
        source: ModelSource,
        slot: ModelSlot,
        poll_s: float,
        loader: Callable[[str, str], LoadedModel] = load_version,
    ) -> None:
        super().__init__(name="codemill-alias-follower", daemon=True)
        self.source, self.slot, self.poll_s, self.loader = source, slot, poll_s, loader
        self.stopped = threading.Event()

    def run(self) -> None:
        import mlflow

        client = mlflow.MlflowClient()
        while not self.stopped.wait(self.poll_s):
            try:
                version = resolve_version(self.source, client)
                if version != self.slot.current.version:
                    loaded = self.loader(self.source.name, version)
                    old = self.slot.swap(loaded)
                    log.warning(
                        "%s: now serving version %s (was %s; loaded in %.1f s)",
                        self.source.uri,
                        version,
                        old.version,
                        loaded.load_s,
                    )
            except Exception as exc:
                log.error(
                    "%s: cannot follow the alias (%s); still serving version %s",
                    self.source.uri,
                    exc,
                    self.slot.current.version,
                )

    def stop(self) -> None:
        """End the polling loop."""
        self.stopped.set()


def load_source(source: ModelSource) -> LoadedModel:
    """The model ``source`` names now."""
    if not source.registered:
        return load_path(source.uri)
    import mlflow

    return load_version(source.name, resolve_version(source, mlflow.MlflowClient()))
