"""What this machine offers for speed, and the precision a run uses when its config says ``auto``.

Why the precision is chosen by the hardware: bf16 autocast is a speed-up only where the processor
computes in bf16 natively. On a CUDA GPU with bf16 (Ampere and later) and on x86 CPUs with
AVX512-BF16 or AMX it is faster than float32 (about 1.7x for the embedded default's training step on
two AVX512-BF16 cores). On an AVX2-only CPU (most laptops, many cloud machines) oneDNN emulates it
and a ViT-Tiny training step runs about 18x *slower* than in float32. One config must be quick on
both, so ``trainer.precision: auto`` decides per machine, and says why.
"""

from __future__ import annotations

import os
import platform
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

AUTO = "auto"
# Measured on a 2-core AVX2 x86 CPU without AVX512-BF16: ViT-Tiny step at 64 px, bf16 autocast vs fp32.
EMULATED_BF16_SLOWDOWN = 18
# /proc/cpuinfo flags of native bf16 arithmetic on x86 (AVX512-BF16 dot products, AMX tiles).
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# Flags shown by `python -m uniflow doctor` because they decide CPU speed.
SPEED_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")


@dataclass(frozen=True)
class PrecisionChoice:
    """The Lightning precision a run uses, what the config asked for, and why (recorded with results)."""

    precision: str
    requested: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"precision": self.precision, "requested": self.requested, "reason": self.reason}


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU feature flags the kernel reports (Linux); empty where there is no ``/proc/cpuinfo``."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags") and ":" in line:
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_model(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    try:
        for line in Path(cpuinfo).read_text().splitlines():
            if line.startswith("model name") and ":" in line:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) at or above which bf16 dot products are native.
_ONEDNN_BF16_ISAS = ("AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX10", "ALL")


def isa_cap(environ: dict[str, str] | None = None) -> str | None:
    """A kernel-dispatch cap set in the environment that rules native bf16 out, as ``NAME=value``.

    oneDNN (``ONEDNN_MAX_CPU_ISA``, formerly ``DNNL_MAX_CPU_ISA``) and PyTorch's own kernels
    (``ATEN_CPU_CAPABILITY``) can be told to use older instructions than the CPU has; bf16 then runs
    on the emulated path even on an AVX512-BF16 CPU (which is also how we reproduce an AVX2 machine).
    """
    env = os.environ if environ is None else environ
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        value = env.get(name)
        if value and not value.upper().startswith(_ONEDNN_BF16_ISAS):
            return f"{name}={value}"
    aten = env.get("ATEN_CPU_CAPABILITY")
    if aten and aten.lower() in ("default", "avx2"):
        return f"ATEN_CPU_CAPABILITY={aten}"
    return None


def cpu_has_native_bf16(flags: frozenset[str] | None = None, environ: dict[str, str] | None = None) -> bool:
    """True where bf16 matrix products run in hardware on this CPU (x86 AVX512-BF16 or AMX-BF16).

    Other CPUs (AVX2-only x86, and ARM, where PyTorch's bf16 CPU kernels are not the fast path we
    measured) are treated as emulating bf16: float32 is the safe choice there. So is a capable CPU
    whose kernels are capped to older instructions by the environment (:func:`isa_cap`).
    """
    flags = cpu_flags() if flags is None else flags
    return any(flag in flags for flag in NATIVE_BF16_FLAGS) and isa_cap(environ) is None


def _uses_cuda(accelerator: str) -> bool:
    if accelerator in ("gpu", "cuda"):
        return True
    return accelerator == "auto" and torch.cuda.is_available()


def resolve_precision(
    requested: str,
    accelerator: str = "auto",
    *,
    cuda_bf16: bool | None = None,
    cpu_bf16: bool | None = None,
) -> PrecisionChoice:
    """The precision to hand to Lightning for ``requested`` on this machine.

    ``auto``: bf16-mixed on a CUDA device with bf16, bf16-mixed on a CPU with native bf16, else
    32-true. An explicit precision is obeyed; bf16 on a CPU that emulates it gets a warning naming
    the slowdown and the override. ``cuda_bf16``/``cpu_bf16`` replace the hardware probes (tests).
    """
    on_cuda = _uses_cuda(accelerator)
    if on_cuda:
        native = (
            torch.cuda.is_available() and torch.cuda.is_bf16_supported() if cuda_bf16 is None else cuda_bf16
        )
        where = "the CUDA device " + ("supports bf16" if native else "has no bf16")
    else:
        native = cpu_has_native_bf16() if cpu_bf16 is None else cpu_bf16
        cap = isa_cap() if cpu_bf16 is None else None
        if native:
            where = "the CPU computes bf16 natively (AVX512-BF16/AMX)"
        elif cap:
            where = (
                f"the CPU's kernels are capped by {cap}: bf16 is emulated (~{EMULATED_BF16_SLOWDOWN}x slower)"
            )
        else:
            where = f"the CPU has no native bf16 (no AVX512-BF16/AMX; bf16 autocast ~{EMULATED_BF16_SLOWDOWN}x slower)"
    if requested != AUTO:
        if requested.startswith("bf16") and not on_cuda and not native:
            warnings.warn(
                f"trainer.precision={requested} on a CPU without native bf16 (no AVX512-BF16/AMX): "
                f"bf16 autocast is emulated there, about {EMULATED_BF16_SLOWDOWN}x slower than float32 "
                "in our measurements. Use trainer.precision=auto or trainer.precision=32-true.",
                stacklevel=2,
            )
        return PrecisionChoice(requested, requested, f"set explicitly; {where}")
    chosen = "bf16-mixed" if native else "32-true"
    return PrecisionChoice(chosen, AUTO, f"auto: {where}")
