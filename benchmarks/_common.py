"""Helpers shared by the benchmark scripts: machine description, timing, markdown output."""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), {dev}, Python {platform.python_version()}")


def timed(fn: Callable[[], int]) -> tuple[float, int]:
    """Run ``fn`` (which returns a token count); return (seconds, tokens)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    n = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0, n


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def add_device_args(ap) -> None:
    """``--device`` / ``--dtype``, as in a pipeline file (auto: CUDA in bf16 when there is a GPU)."""
    ap.add_argument("--device", default="auto", help="cpu | cuda | cuda:N | auto")
    ap.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16 | float16")


def add_cpu_args(ap, name: str) -> None:
    """``--cpu-kernels`` / ``--threads``; :func:`cpu_variant` names the page they write."""
    ap.add_argument("--cpu-kernels", default="default", choices=["default", "onednn"],
                    help="onednn: the model's linear layers run through oneDNN with packed weights "
                         f"(decodekit/onednn.py), for HF's rows too (they share the model); writes {name}_onednn.md")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch CPU threads (0: torch's default); a CPU run on more than one thread writes "
                         f"{name}[_onednn]_<N>threads.md")


def cpu_variant(name: str, cpu_kernels: str, device: torch.device, dtype: torch.dtype = torch.float32) -> str:
    """``name``, then ``_onednn`` for oneDNN kernels, ``_bf16`` for a bfloat16 model on the CPU and
    ``_<N>threads`` for a CPU run on N > 1 threads (call after ``torch.set_num_threads``)."""
    if cpu_kernels == "onednn":
        name += "_onednn"
    if device.type == "cpu" and dtype == torch.bfloat16:
        name += "_bf16"
    if device.type == "cpu" and torch.get_num_threads() > 1:
        name += f"_{torch.get_num_threads()}threads"
    return name


def result_name(name: str, device: torch.device) -> str:
    """Results from a GPU go next to the CPU ones, as ``<name>_cuda``, instead of replacing them."""
    return name if device.type == "cpu" else f"{name}_{device.type}"


def write_result(name: str, markdown: str) -> Path:
    """Write docs/results/<name>.md (or into ``$DECODEKIT_RESULTS_DIR`` when that is set)."""
    folder = Path(os.environ.get("DECODEKIT_RESULTS_DIR") or ROOT / "docs" / "results")
    out = folder / f"{name}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown)
    return out
