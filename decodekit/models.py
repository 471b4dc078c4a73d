"""Resolving ``model:`` to local files and loading them. Nothing is fetched from a model hub.

``model`` is a registered alias (``smollm2-135m``, the embedded default) or a local HuggingFace
model directory. Aliases build their directory once under the cache (``DECODEKIT_CACHE``, default
``~/.cache/decodekit``) so that later loads take about a second.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from decodekit.attention import use_cpu_attention
from decodekit.errors import ConfigError, ModelNotFoundError

DEFAULT_MODEL = "smollm2-135m"


def cache_dir() -> Path:
    root = os.environ.get("DECODEKIT_CACHE")
    if root:
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "decodekit"


def resolve(spec: str) -> Path:
    """A local model directory for ``spec`` (alias or path), building an alias's files if needed."""
    from decodekit.plugins import get_registry

    models = get_registry().models
    if spec in models:
        return Path(models[spec].loader(cache_dir() / "models"))
    path = Path(spec).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return path
    if path.exists():
        raise ModelNotFoundError(f"model {spec!r}: {path} is not a HuggingFace model directory (no config.json)")
    raise ModelNotFoundError(
        f"model {spec!r}: not a registered alias ({', '.join(sorted(models)) or 'none'}) "
        f"and no such local directory; nothing is downloaded from a model hub"
    )


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ConfigError(f"device {device!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r}: CUDA is not available on this machine (use cpu or auto)")
    return dev


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise ConfigError(f"dtype {dtype!r}: use auto, float32, bfloat16 or float16")
    return table[dtype]


@lru_cache(maxsize=4)
def _load(path: str, device: str, dtype: torch.dtype, cpu_kernels: str = "default") -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    tokenizer = AutoTokenizer.from_pretrained(path)
    hf_logging.disable_progress_bar()  # a local load takes a second; its bar is noise
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    finally:
        hf_logging.enable_progress_bar()
    model.to(device).eval()
    use_cpu_attention(model)  # CPU: see attention.py (no K/V copies; bf16: pass-invariant attention)
    if cpu_kernels == "onednn":
        from decodekit.onednn import pack_linears

        pack_linears(model)
    return model, tokenizer


def load(spec: str, device: str = "auto", dtype: str = "auto", cpu_kernels: str = "default") -> tuple[Any, Any]:
    """``(model, tokenizer)`` for ``spec`` on ``device`` in ``dtype`` (weights shared per process).

    ``cpu_kernels="onednn"``: the linear layers run through oneDNN with packed weights
    (:mod:`decodekit.onednn`); such a model is loaded and shared apart from the plain one.
    On a CPU, a model with grouped-query ``sdpa`` attention is switched to
    :mod:`decodekit.attention`'s (bitwise the same outputs, no K/V copies in masked passes).
    """
    if cpu_kernels not in ("default", "onednn"):
        raise ConfigError(f"cpu_kernels {cpu_kernels!r}: use default or onednn")
    path = resolve(spec)
    dev = pick_device(device)
    return _load(str(path), str(dev), pick_dtype(dtype, dev), cpu_kernels)
