"""The paper's benchmarks that need models this project does not have yet (probes, MLLM).

They are in the table with the published numbers and the reason they are not run. Each is replaced
by registering an entry of the same name with a runner (``uniflow.evaluation.registry.register``)
from the module that implements it.
"""

from __future__ import annotations

from uniflow.evaluation import references
from uniflow.evaluation.registry import Benchmark, register

MLLM = (
    "needs the MLLM probe (connector + LLM on the tokenizer's semantic tokens, uniflow/understanding), "
    "not implemented yet"
)
PROBE = "needs the {what} probe on frozen tokenizer features (uniflow/understanding), not implemented yet"

_UNDERSTANDING = (
    ("pope", "POPE", references.POPE),
    ("gqa", "GQA", references.GQA),
    ("textvqa", "TextVQA", references.TEXTVQA),
    ("mmvet", "MM-Vet", references.MMVET),
    ("mmbench", "MMBench", references.MMBENCH),
    ("mme_p", "MME-P", references.MME_P),
)
for name, metric, refs in _UNDERSTANDING:
    register(
        Benchmark(
            name=name,
            family="understanding",
            title=f"{metric} (official score)",
            metrics=(metric,),
            references=refs,
            paper=True,
            pending=MLLM,
        )
    )

_PROBES = (
    ("imagenet_linear", "classification", "ImageNet-1K linear probe top-1", ("top-1",),
     references.IMAGENET_LINEAR_PROBE, "linear classification"),
    ("ade20k_seg", "segmentation", "ADE20K linear probe", ("mIoU",),
     references.ADE20K_SEGMENTATION, "dense linear segmentation"),
    ("coco_det", "detection", "COCO 2017 detection probe", ("box mAP",),
     references.COCO_DETECTION, "detection"),
    ("nyu_depth", "depth", "NYU-Depth v2 linear probe", ("RMSE", "delta1"),
     references.NYU_DEPTH, "dense linear depth"),
)  # fmt: skip
for name, family, title, metrics, refs, probe in _PROBES:
    register(
        Benchmark(
            name=name,
            family=family,
            title=title,
            metrics=metrics,
            references=refs,
            paper=True,
            pending=PROBE.format(what=probe),
        )
    )
