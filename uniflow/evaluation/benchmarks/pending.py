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

register(
    Benchmark(
        name="imagenet_linear",
        family="classification",
        title="ImageNet-1K linear probe top-1",
        metrics=("top-1",),
        references=references.IMAGENET_LINEAR_PROBE,
        paper=True,
        pending=PROBE.format(what="linear classification"),
    )
)
register(
    Benchmark(
        name="ade20k_seg",
        family="segmentation",
        title="ADE20K linear probe",
        metrics=("mIoU",),
        references=references.ADE20K_SEGMENTATION,
        paper=True,
        pending=PROBE.format(what="dense linear segmentation"),
    )
)
register(
    Benchmark(
        name="coco_det",
        family="detection",
        title="COCO 2017 detection probe",
        metrics=("box mAP",),
        references=references.COCO_DETECTION,
        paper=True,
        pending=PROBE.format(what="detection"),
    )
)
register(
    Benchmark(
        name="nyu_depth",
        family="depth",
        title="NYU-Depth v2 linear probe",
        metrics=("RMSE", "delta1"),
        references=references.NYU_DEPTH,
        paper=True,
        pending=PROBE.format(what="dense linear depth"),
    )
)
