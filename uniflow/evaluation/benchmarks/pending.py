"""The paper's benchmarks that need models this project does not have yet (probes, MLLM).

They are in the table with the published numbers and the reason they are not run. The stage that
implements one exports an entry of the same name with a runner from its own module and deletes the
entry here (see :mod:`uniflow.evaluation.registry`). ``data`` describes the layout the data is
commonly packaged in (the dataset's release, LLaVA-1.5's evaluation folders, BTS's NYU split), the
one the data package's readers (``uniflow.data.probe_readers``, ``uniflow.data.vqa_formats``) read,
so a user can prepare the data before the stage lands.
"""

from __future__ import annotations

from uniflow.evaluation import references
from uniflow.evaluation.entry import Benchmark

MLLM = (
    "needs the MLLM probe (connector + LLM on the tokenizer's semantic tokens, uniflow/understanding), "
    "not implemented yet"
)
PROBE = "needs the {what} probe on frozen tokenizer features (uniflow/understanding), not implemented yet"

# LLaVA-1.5's evaluation folders (playground/data/eval/<benchmark>/): a LLaVA question file (jsonl:
# question_id, image, text) with the benchmark's images and answer key, or a VLMEvalKit TSV.
_UNDERSTANDING = (
    ("pope", "POPE", references.POPE,
     "LLaVA-1.5's eval/pope/: llava_pope_test.jsonl, coco/coco_pope_{adversarial,popular,random}.json "
     "(answers), val2014/*.jpg"),
    ("gqa", "GQA", references.GQA,
     "LLaVA-1.5's eval/gqa/: llava_gqa_testdev_balanced.jsonl, data/testdev_balanced_questions.json "
     "(answers), data/images/*.jpg"),
    ("textvqa", "TextVQA", references.TEXTVQA,
     "LLaVA-1.5's eval/textvqa/: llava_textvqa_val_v051_ocr.jsonl, TextVQA_0.5.1_val.json (answers), "
     "train_images/*.jpg (the val images ship there)"),
    ("mmvet", "MM-Vet", references.MMVET,
     "LLaVA-1.5's eval/mm-vet/: llava-mm-vet.jsonl, images/ (scored by the official GPT-4 grader)"),
    ("mmbench", "MMBench", references.MMBENCH,
     "mmbench_dev_20230712.tsv (VLMEvalKit TSV, images embedded as base64)"),
    ("mme_p", "MME-P", references.MME_P,
     "LLaVA-1.5's eval/MME/: llava_mme.jsonl, MME_Benchmark_release_version/ (its 10 perception subtasks)"),
)  # fmt: skip

_PROBES = (
    ("imagenet_linear", "classification", "ImageNet-1K linear probe top-1", ("top-1",),
     references.IMAGENET_LINEAR_PROBE, "linear classification",
     "ImageNet-1K root with train/<wnid>/*.JPEG and val/<wnid>/*.JPEG (class folders)"),
    ("ade20k_seg", "segmentation", "ADE20K linear probe", ("mIoU",),
     references.ADE20K_SEGMENTATION, "dense linear segmentation",
     "ADEChallengeData2016/ with images/{training,validation}/*.jpg and annotations/{training,validation}/*.png"),
    ("coco_det", "detection", "COCO 2017 detection probe", ("box mAP",),
     references.COCO_DETECTION, "detection",
     "COCO root with train2017/, val2017/ and annotations/instances_{train,val}2017.json"),
    ("nyu_depth", "depth", "NYU-Depth v2 linear probe", ("RMSE", "delta1"),
     references.NYU_DEPTH, "dense linear depth",
     "NYU-Depth v2 as BTS packages it (Eigen split): sync/ (train), official_splits/test/, and the lists "
     "nyudepthv2_{train,test}_files_with_gt.txt of '<rgb> <depth png> <focal>' lines; depth 16-bit png, mm"),
)  # fmt: skip

BENCHMARKS: tuple[Benchmark, ...] = (
    *(
        Benchmark(
            name=name,
            family="understanding",
            title=f"{metric} (official score)",
            metrics=(metric,),
            references=refs,
            paper=True,
            data=data,
            pending=MLLM,
        )
        for name, metric, refs, data in _UNDERSTANDING
    ),
    *(
        Benchmark(
            name=name,
            family=family,
            title=title,
            metrics=metrics,
            references=refs,
            paper=True,
            data=data,
            pending=PROBE.format(what=probe),
        )
        for name, family, title, metrics, refs, probe, data in _PROBES
    ),
)
