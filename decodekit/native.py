"""decodekit's one compiled kernel: bfloat16 attention for the CPU (attention_bf16.c).

It is compiled at first use with the machine's C compiler (``$CC``, else ``cc``) and
``-march=native``, into the cache (``DECODEKIT_CACHE``, default ``~/.cache/decodekit``), under a
name that hashes the source, the flags and the CPU's feature flags, so a cache shared between
machines never hands one CPU another's build. Compiling takes about a second; later loads
reuse the file. Where there is no compiler, or the CPU lacks AVX-512 with BF16, or
``DECODEKIT_NATIVE=0`` is set, :func:`kernel` returns None and decodekit uses torch's attention
instead (decodekit/invariant_attention.py), exact too but slower in multi-token passes.

On a CPU with AMX (and a Linux that grants the tile state) the kernel multiplies in AMX tiles,
else in AVX-512 vectors; the choice is made once per process (``DECODEKIT_NATIVE_AMX=0`` keeps
the vectors). With the tiles a pass over 16 / 32 new tokens costs 1.12 / 1.32 plain passes on
the embedded model, one core, against 1.18 / 1.46 on vectors in the same run; a plain step costs
the same either way (docs/results/cpu_kernels.md, benchmarks/cpu_kernels.py).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("attention_bf16.c")
FLAGS = ["-O3", "-funroll-loops", "-march=native", "-shared", "-fPIC"]

_I64, _PTR = ctypes.c_int64, ctypes.c_void_p


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor()


def _build(target: Path) -> bool:
    """Compile the kernel into ``target``; False (and why, in the log) where that is not possible."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        log.info("no C compiler: decodekit's bfloat16 attention kernel is not built")
        return False
    tmp = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        done = subprocess.run([cc, *FLAGS, "-o", tmp, str(SOURCE)], capture_output=True, text=True)
        if done.returncode != 0:
            log.info("decodekit's bfloat16 attention kernel does not build here:\n%s", done.stderr[-2000:])
            return False
        os.replace(tmp, target)  # atomic: a concurrent build of the same file is harmless
        return True
    except OSError as e:  # the compiler does not run, or the cache is not writable
        log.info("decodekit's bfloat16 attention kernel is not built (%s)", e)
        return False
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


@lru_cache(maxsize=1)
def kernel():
    """The ctypes function ``decodekit_attention_bf16``, or None where it cannot be built."""
    from decodekit.models import cache_dir

    if os.environ.get("DECODEKIT_NATIVE", "1") == "0":
        return None
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return None
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join(FLAGS).encode() + _cpu_flags().encode()).hexdigest()[:16]
    path = cache_dir() / "kernels" / f"attention_bf16-{key}.so"
    if not path.exists() and not _build(path):
        return None
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as e:
        log.info("decodekit's bfloat16 attention kernel does not load: %s", e)
        return None
    fn = lib.decodekit_attention_bf16
    fn.restype = None
    fn.argtypes = [_PTR] * 4 + [_I64] * 18 + [_PTR, _PTR, _I64, ctypes.c_float, _PTR]
    fn.work = lib.decodekit_attention_bf16_work
    fn.work.restype = _I64
    fn.work.argtypes = [_I64] * 6
    fn.amx = getattr(lib, "decodekit_attention_amx", None)  # built where the compiler targets AMX
    if fn.amx is not None:
        fn.amx.restype = ctypes.c_int
        fn.amx.argtypes = [ctypes.c_int]
        fn.amx(0 if os.environ.get("DECODEKIT_NATIVE_AMX", "1") == "0" else 1)
    return fn


def uses_amx() -> bool:
    """Whether the kernel runs on AMX tiles in this process (else AVX-512 vectors, or no kernel)."""
    fn = kernel()
    return fn is not None and fn.amx is not None and bool(fn.amx(-1))


@contextmanager
def kernel_path(amx: bool) -> Iterator[bool]:
    """While inside: the kernel on AMX tiles (``amx``) or on AVX-512 vectors; yields whether that
    path is the one in use (False where it is not available); the path in use before comes back after."""
    was = uses_amx()
    try:
        yield set_amx(amx) == amx
    finally:
        set_amx(was)


def set_amx(on: bool) -> bool:
    """Use AMX tiles (where the CPU and the OS have them) or AVX-512 vectors from now on; returns
    whether tiles are in use. Each path is exact on its own, so a generation must not switch
    between them midway (tests and benchmarks compare the two)."""
    fn = kernel()
    return fn is not None and fn.amx is not None and bool(fn.amx(int(on)))


def supports(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> bool:
    """Whether the kernel takes this pass: bfloat16 on the CPU, head size 32 / 64 / 96 / 128, each
    head's vectors contiguous, and it is built."""
    D = query.shape[-1]
    return (query.dtype == torch.bfloat16 and query.device.type == "cpu" and D % 32 == 0 and D <= 128
            and query.shape[1] % key.shape[1] == 0 and query.stride(-1) == key.stride(-1) == value.stride(-1) == 1
            and kernel() is not None)


_scratch = threading.local()  # per thread: a float32 work buffer, grown as needed


def _work(size: int) -> torch.Tensor:
    buf = getattr(_scratch, "buf", None)
    if buf is None or buf.numel() < size:
        buf = _scratch.buf = torch.empty(max(size, 4096), dtype=torch.float32)
    return buf


@lru_cache(maxsize=64)
def causal_counts(B: int, Q: int, C: int) -> torch.Tensor:
    """int32 ``[B, Q]``: query ``i`` of a pass over ``Q`` new tokens after ``C - Q`` cached ones
    sees ``C - Q + i + 1`` keys."""
    return torch.arange(C - Q + 1, C + 1, dtype=torch.int32).expand(B, Q).contiguous()


def attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, counts: torch.Tensor,
              cols: torch.Tensor | None, maxn: int, scale: float) -> torch.Tensor:
    """``query [B, H, Q, D]``, ``key`` / ``value [B, Hkv, C, D]`` (bfloat16, last dimension
    contiguous); query ``i`` of row ``b`` sees ``counts[b, i] <= maxn`` keys (contiguous int32
    ``[B, Q]``): the columns ``cols[b, i, :n]`` (contiguous int32 ``[B, Q, maxn]``), or the first
    ``n`` when ``cols`` is None. Returns ``[B, Q, H, D]``."""
    B, H, Q, D = query.shape
    Hkv, C = key.shape[1], key.shape[2]
    out = query.new_empty(B, Q, H, D)
    fn = kernel()
    work = _work(fn.work(H, Hkv, Q, D, C, maxn))
    qs, ks, vs, os_ = query.stride(), key.stride(), value.stride(), out.stride()
    fn(query.data_ptr(), key.data_ptr(), value.data_ptr(), out.data_ptr(),
       B, H, Hkv, Q, D, C, qs[0], qs[1], qs[2], ks[0], ks[1], ks[2], vs[0], vs[1], vs[2],
       os_[0], os_[1], os_[2], counts.data_ptr(), 0 if cols is None else cols.data_ptr(), maxn,
       scale, work.data_ptr())
    return out
