"""Probe rows: heads on frozen features of the tokenizer's student and of its teacher, side by side.

Each row runs the ``probe`` stage (``uniflow.understanding.probe_stage``) twice, once per feature
source, through ``uniflow.training.cli.run``, the path of ``python -m uniflow train``: the student
and the teacher differ only in ``probe.source``. The probe runs go to ``<eval dir>/probes/<row>_<source>/``
(config, TensorBoard, head, result.json). Unprefixed metrics are the student's (the tokenizer being
evaluated, the number the paper reports); ``teacher ...`` are the untouched encoder's.

- Embedded rows (``embedded_probe_*``): the protocols of ``uniflow.understanding.protocols.EMBEDDED``
  on embedded scenes; ``eval.num_samples.<row>`` held-out scenes, four times as many training scenes.
- Paper rows (``imagenet_linear``, ``ade20k_seg``, ``nyu_depth``, ``coco_det``): the protocols of
  ``PAPER`` on ``eval.data.<row>`` at ``eval.image_size``; ``eval.num_samples.<row>``, when set, caps
  both splits (the first N samples).

Probe heads train in one process: under torchrun use the probe stage directly (it is distributed).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from uniflow.config import ConfigError
from uniflow.evaluation import references
from uniflow.evaluation.config import EvalConfig, embedded_count
from uniflow.evaluation.context import EvalContext
from uniflow.evaluation.entry import Benchmark
from uniflow.evaluation.results import BenchmarkRun, MetricValue
from uniflow.understanding.probe_config import SOURCES
from uniflow.understanding.protocols import EMBEDDED, PAPER

PROBE_DIR = "probes"
# Embedded training scenes per held-out scene.
TRAIN_PER_VAL = 4

# task -> (result key, metric name, scale): top-1, mIoU and box mAP in percent, as papers print them.
_METRICS: dict[str, tuple[tuple[str, str, float], ...]] = {
    "classification": (("top1", "top-1", 100.0),),
    "segmentation": (("miou", "mIoU", 100.0),),
    "depth": (("rmse", "RMSE", 1.0), ("abs_rel", "AbsRel", 1.0), ("delta1", "delta1", 1.0)),
    "detection": (("map", "box mAP", 100.0),),
}
_DEFINITIONS = {
    "top-1": "top-1 accuracy (%) of a linear head on mean-pooled last-block patch tokens",
    "top-5": "top-5 accuracy (%) of the same head",
    "mIoU": "mean IoU (%) over classes present, one confusion matrix over the set, label 255 ignored",
    "RMSE": "root mean squared depth error (m) over valid pixels, per image then averaged",
    "AbsRel": "mean |d - d*| / d* over valid pixels, per image then averaged",
    "delta1": "share of valid pixels with max(d/d*, d*/d) < 1.25, per image then averaged",
    "box mAP": "COCO box AP@[.5:.95] (%), pycocotools",
    "top-1 (logistic regression)": "scikit-learn logistic regression on the same standardised pooled features (%)",
}
LOGISTIC = "top-1 (logistic regression)"


def metric_names(task: str, logistic: bool = False) -> tuple[str, ...]:
    names = [name for _, name, _ in _METRICS[task]]
    if logistic:
        names.append(LOGISTIC)
    return (*names, *(f"teacher {name}" for name in names))


def probe_run_config(
    protocol: dict[str, Any],
    *,
    tokenizer_dir: Path,
    source: str,
    output_dir: Path,
    name: str,
    seed: int,
    device: str,
    probe: dict[str, Any],
    num_threads: int | None = None,
) -> Any:
    """The probe-stage run config of ``protocol`` for one feature source, as ``load_config`` builds it."""
    from uniflow.config import load_config

    mapping = copy.deepcopy(protocol)
    mapping["probe"].update(probe, tokenizer=str(tokenizer_dir), source=source)
    mapping.update(
        stage="probe",
        name=name,
        output_dir=str(output_dir),
        seed=seed,
        # Heads are small and fit in float32 on any device; one device, no step checkpoints.
        trainer={"precision": "32-true", "accelerator": device, "devices": 1, "log_every_n_steps": 10,
                 "checkpoint_every_n_steps": 1_000_000},
    )  # fmt: skip
    return load_config(mapping)


def run_probe(cfg: Any) -> dict[str, Any]:
    """Train and score one probe through the probe stage (what ``python -m uniflow train`` runs)."""
    from uniflow.training.cli import check_config, run

    check_config(cfg)
    threads = torch.get_num_threads()
    try:
        metrics = run(cfg)
    finally:
        torch.set_num_threads(threads)  # trainer.num_threads is process-wide; the next rows keep theirs
    assert metrics is not None  # one process: rank 0
    return metrics["probe"]


def _protocol_text(result: dict[str, Any]) -> str:
    p = result["protocol"]
    skip = {"task", "dataset", "source", "num_train", "num_val"}
    return "; ".join(f"{k}={v}" for k, v in p.items() if k not in skip)


def _logistic_regression(cfg: Any) -> float:
    """The scikit-learn path for small sets: logistic regression on the probe's cached pooled features."""
    from uniflow.training.summary import linear_probe_accuracy
    from uniflow.understanding.probe_data import ProbeDataModule

    data = ProbeDataModule(cfg.probe, cfg.seed)
    data.setup("fit")  # the features are in the cache already: no encoder pass
    assert data.train_set is not None and data.val_set is not None
    train_x, train_y = (t.numpy() for t in data.train_set.tensors)  # type: ignore[attr-defined]
    val_x, val_y = (t.numpy() for t in data.val_set.tensors)  # type: ignore[attr-defined]
    return 100.0 * linear_probe_accuracy(train_x, train_y, val_x, val_y)


def _run_row(
    ctx: EvalContext,
    row: str,
    task: str,
    protocol: dict[str, Any],
    probe: dict[str, Any],
    data: str,
    num_threads: int | None = None,
) -> BenchmarkRun:
    if ctx.world_size > 1:
        raise RuntimeError(
            f"{row}: probe heads train in one process; run the probe stage (python -m uniflow train "
            "experiments/probe/...) for a distributed probe"
        )
    logistic = task == "classification" and row.startswith("embedded")
    metrics: dict[str, MetricValue] = {}
    provenance: dict[str, Any] = {"data": data}
    for source in SOURCES:
        cfg = probe_run_config(
            protocol,
            tokenizer_dir=ctx.tokenizer_dir,
            source=source,
            output_dir=ctx.output_dir / PROBE_DIR,
            name=f"{row}_{source}",
            seed=ctx.cfg.seed,
            device=ctx.device.type,
            probe=probe,
            num_threads=num_threads,
        )
        result = run_probe(cfg)
        prefix = "" if source == "student" else "teacher "
        common = {
            "features": result["source"]["description"],
            "features_sha256": result["source"]["model_hash"],
            "protocol": _protocol_text(result),
            "train_samples": result["samples"]["train"],
            "probe_run": str(ctx.output_dir / PROBE_DIR / f"{row}_{source}"),
        }
        for key, name, scale in _METRICS[task]:
            metrics[prefix + name] = MetricValue(
                result["metrics"][key] * scale, provenance={**common, "definition": _DEFINITIONS[name]}
            )
        if logistic:
            metrics[prefix + LOGISTIC] = MetricValue(
                _logistic_regression(cfg), provenance={**common, "definition": _DEFINITIONS[LOGISTIC]}
            )
        provenance["samples"] = result["samples"]["val"]
    notes = [
        f"{row}: student {metric} {metrics[metric].value:.2f}, teacher {metrics['teacher ' + metric].value:.2f}"
        for _, metric, _ in _METRICS[task][:1]
    ]
    return BenchmarkRun(metrics, provenance, notes)


# ---------------------------------------------------------------------------------------- embedded
EMBEDDED_ROWS = {
    "classification": "embedded_probe_cls",
    "segmentation": "embedded_probe_seg",
    "depth": "embedded_probe_depth",
    "detection": "embedded_probe_det",
}
_EMBEDDED_TITLES = {
    "classification": "linear classification probe, held-out embedded scenes (dominant shape, 4 classes)",
    "segmentation": "linear segmentation probe, held-out embedded scenes (background + 6 shapes)",
    "depth": "linear depth probe, held-out embedded scenes (depth 1-10)",
    "detection": "detection probe (simple feature pyramid + Faster R-CNN), held-out embedded scenes",
}


def _embedded(task: str) -> Benchmark:
    row = EMBEDDED_ROWS[task]

    def run(ctx: EvalContext) -> BenchmarkRun:
        count, size = embedded_count(ctx.cfg, row), ctx.tokenizer.image_size
        probe = {"dataset": "embedded", "num_train": TRAIN_PER_VAL * count, "num_val": count,
                 "resolution": [size, size]}  # fmt: skip
        data = (
            f"embedded scenes, {size} px, seed {ctx.cfg.seed}: {TRAIN_PER_VAL * count} training (train split), "
            f"{count} held-out (val split)"
        )
        # One intra-op thread: the embedded heads' steps are too small to gain from a second one.
        return _run_row(ctx, row, task, EMBEDDED[task], probe, data, num_threads=1)

    metrics = metric_names(task, logistic=task == "classification")
    return Benchmark(
        name=row,
        family=task,
        title=f"{_EMBEDDED_TITLES[task]}; student, teacher beside",
        metrics=metrics,
        references=references.embedded(metrics),
        paper=False,
        hint=f"add {row} to eval.benchmarks and set eval.num_samples.{row}",
        run=run,
        check=lambda cfg: (embedded_count(cfg, row), None)[1],
    )


# ---------------------------------------------------------------------------------------- paper rows
_PAPER_ROWS = (
    ("imagenet_linear", "classification", "ImageNet-1K linear probe top-1", references.IMAGENET_LINEAR_PROBE,
     "ImageNet-1K root with train/<wnid>/*.JPEG and val/<wnid>/*.JPEG (class folders)"),
    ("ade20k_seg", "segmentation", "ADE20K linear probe", references.ADE20K_SEGMENTATION,
     "ADEChallengeData2016/ with images/{training,validation}/*.jpg and annotations/{training,validation}/*.png"),
    ("nyu_depth", "depth", "NYU-Depth v2 linear probe", references.NYU_DEPTH,
     "NYU-Depth v2 as BTS packages it (Eigen split): a root with sync/ (train), official_splits/test/, and "
     "the lists nyudepthv2_{train,test}_files_with_gt.txt of '<rgb> <depth png> <focal>' lines; depth 16-bit png, mm"),
    ("coco_det", "detection", "COCO 2017 detection probe", references.COCO_DETECTION,
     "COCO root with train2017/, val2017/ and annotations/instances_{train,val}2017.json"),
)  # fmt: skip


def _resolution(task: str, side: int, stride: int) -> list[int]:
    """The probe input: ``side`` square for classification; for the dense tasks the nearest multiple
    of the encoder's stride (256 -> 252 at patch 14), and NYU's 3:4 frame keeps its shape."""
    if task == "classification":
        return [side, side]

    def fit(length: float) -> int:
        return max(stride, round(length / stride) * stride)

    return [fit(side), fit(side * 4 / 3)] if task == "depth" else [fit(side), fit(side)]


def _paper(row: str, task: str, title: str, refs: tuple, data: str) -> Benchmark:
    def check(cfg: EvalConfig) -> None:
        if row not in cfg.data:
            raise ConfigError(f"benchmark {row} needs eval.data.{row}: {data}")
        if not Path(cfg.data[row]).expanduser().is_dir():
            raise ConfigError(f"eval.data.{row}: directory not found: {cfg.data[row]}")

    def run(ctx: EvalContext) -> BenchmarkRun:
        count = ctx.cfg.num_samples.get(row)
        side = ctx.cfg.image_size
        probe = {"data_path": ctx.cfg.data[row], "num_train": count, "num_val": count,
                 "resolution": _resolution(task, side, ctx.tokenizer.stride)}  # fmt: skip
        cap = f"first {count} of each split" if count is not None else "every sample"
        description = f"{ctx.cfg.data[row]} ({cap}), resized and centre-cropped to {probe['resolution']}"
        return _run_row(ctx, row, task, PAPER[task], probe, description)

    metrics = metric_names(task)
    # The teacher's metrics are this row's own baseline (the untouched encoder, measured here), so
    # their reference cell says that rather than looking like a missing lookup.
    teacher_refs = tuple(
        references.Reference("UniFlow", m, None, "the untouched encoder, measured in this row", paper=True)
        for m in metrics
        if m.startswith("teacher ")
    )
    return Benchmark(
        name=row,
        family=task,
        title=f"{title}; student, teacher beside",
        metrics=metrics,
        references=(*refs, *teacher_refs),
        paper=True,
        data=data,
        hint=f"add {row} to eval.benchmarks and set eval.data.{row}",
        run=run,
        check=check,
    )


BENCHMARKS: tuple[Benchmark, ...] = (
    *(_embedded(task) for task in EMBEDDED_ROWS),
    *(_paper(*row) for row in _PAPER_ROWS),
)
