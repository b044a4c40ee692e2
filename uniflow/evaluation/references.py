"""Published numbers the results table shows beside ours: UniFlow's own (the paper) and the anchors'
(the other tokenizers' papers), each as its source states it.

Values are strings exactly as the sources give them, so ranges ("0.38-0.41") and qualified numbers
stay what they are. Where the sources give no number for a benchmark and metric, the entry says so
(``value=None`` with a note) instead of leaving the cell to look like a missing lookup; nothing is
derived here except where the note says how.
"""

from __future__ import annotations

from dataclasses import dataclass

NOT_IN_SOURCES = "not reported in the sources"


@dataclass(frozen=True)
class Reference:
    """One published number: ``paper`` marks UniFlow's own, the rest are anchors (other tokenizers)."""

    system: str
    metric: str
    value: str | None
    note: str = ""
    paper: bool = False


def _paper(metric: str, value: str | None, note: str = "") -> Reference:
    return Reference("UniFlow", metric, value, note or ("" if value else NOT_IN_SOURCES), paper=True)


IMAGENET_RECONSTRUCTION = (
    _paper("rFID", "0.26", "InternViT encoder; 0.28 after 70k steps on 1.2M images"),
    _paper("PSNR", "28.6-31.0", "across encoders (one source); 33.23 in the GTB-depth 6 / beta=2 ablation"),
    _paper("SSIM", "up to 0.87"),
    _paper("LPIPS", None),
    Reference("UniTok", "rFID", "0.38-0.41"),
    Reference("TokenFlow", "rFID", "1.37"),
    Reference("TokenFlow", "PSNR", "21.41"),
    Reference("TokenFlow", "SSIM", "0.687"),
    Reference("UniLIP", "rFID", "0.79"),
    Reference("UniLIP", "PSNR", "22.99"),
    Reference("UniLIP", "SSIM", "0.747"),
    Reference("VA-VAE", "rFID", "0.28"),
    Reference("RAE (DINOv2-B)", "rFID", "0.57"),
)

COCO_RECONSTRUCTION = tuple(
    _paper(m, None, "no COCO number in the sources") for m in ("rFID", "PSNR", "SSIM")
)

IMAGENET_GENERATION = (
    _paper("gFID", "2.42 (= 2.51 - 0.09)", "stated as 'UniTok - 0.09', without guidance"),
    _paper("IS", None),
    Reference("UniTok", "gFID", "2.51", "without guidance, LlamaGen-XXL"),
    Reference("VA-VAE + LightningDiT", "gFID", "2.17 / 1.35", "without / with CFG"),
)

_UNDERSTANDING_AVERAGE = (
    "only the average is reported: UniFlow-LV (SigLIP2 + Vicuna-7B) 67.87 over POPE, GQA, TextVQA, "
    "MM-Vet, MMBench, MME-P/20 (TokenFlow-L 62.40)"
)


def _understanding(metric: str, *anchors: Reference) -> tuple[Reference, ...]:
    return (_paper(metric, None, _UNDERSTANDING_AVERAGE), *anchors)


POPE = _understanding("POPE", Reference("UniTok", "POPE", "83.2"))
GQA = _understanding("GQA", Reference("UniTok", "GQA", "61.1"))
TEXTVQA = _understanding("TextVQA")
MMVET = _understanding("MM-Vet")
MMBENCH = _understanding("MMBench")
MME_P = (
    _paper("MME-P", "1505.1", "ablation, adaptive beta=2 (1411.0 without distillation)"),
    Reference("UniTok", "MME-P", "1448", "given as 'MME 1448'"),
)

IMAGENET_LINEAR_PROBE = (_paper("top-1", None),)
ADE20K_SEGMENTATION = (_paper("mIoU", None),)
COCO_DETECTION = (_paper("box mAP", None),)
NYU_DEPTH = (_paper("RMSE", None), _paper("AbsRel", None), _paper("delta1", None))


def embedded(metrics: tuple[str, ...]) -> tuple[Reference, ...]:
    """The embedded benchmarks are this project's CPU stand-ins: no published number can apply."""
    note = "none: embedded data"
    return tuple(_paper(m, None, note) for m in metrics)
