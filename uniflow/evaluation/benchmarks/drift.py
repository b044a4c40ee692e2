"""Semantic drift on embedded held-out scenes: how far the tokenizer's student moved from its teacher.

The teacher is the untouched encoder the tokenizer started from (its config's ``tokenizer.encoder``
with the checkpoint it names, :meth:`FeatureSource.baseline`); the student is the exported
tokenizer's encoder. Per block, the mean token cosine and linear CKA go to ``drift.md`` and
``drift.png`` beside ``results.md``, to TensorBoard under ``<eval dir>/tensorboard``, and as a note
in ``results.md``; the table rows are the last block's values (the tokens the latent and the
probes read) and the lowest CKA over the blocks.
"""

from __future__ import annotations

from uniflow.evaluation import references
from uniflow.evaluation.config import EvalConfig, embedded_count
from uniflow.evaluation.context import EvalContext
from uniflow.evaluation.entry import Benchmark
from uniflow.evaluation.results import BenchmarkRun, MetricValue
from uniflow.understanding.drift_report import DRIFT_MD, DRIFT_PNG, semantic_drift_report
from uniflow.understanding.features import FeatureSource

NAME = "embedded_drift"
METRICS = ("last-block cosine", "last-block CKA", "lowest CKA")
TOKENS = "patch tokens (prefix tokens excluded), paired by image and grid position, block l with block l"


def _check(cfg: EvalConfig) -> None:
    embedded_count(cfg, NAME)


def _run(ctx: EvalContext) -> BenchmarkRun:
    # Imported here: the data package pulls in Lightning, and TensorBoard is only needed when this runs.
    from torch.utils.tensorboard import SummaryWriter

    from uniflow.data.datamodule import heldout_scenes

    size, seed, count = ctx.tokenizer.image_size, ctx.cfg.seed, embedded_count(ctx.cfg, NAME)
    scenes = heldout_scenes(count, size, seed, annotations=False)
    data = f"held-out embedded scenes (val split), {size} px, seed {seed}"
    student = FeatureSource.of_tokenizer(ctx.tokenizer, f"student of {ctx.tokenizer_dir}")
    teacher = FeatureSource.baseline(ctx.tokenizer_dir, seed=seed)
    teacher.encoder.to(ctx.device)
    writer = SummaryWriter(str(ctx.output_dir / "tensorboard")) if ctx.is_main else None
    try:
        rows = semantic_drift_report(
            student,
            teacher,
            scenes,
            ctx.output_dir if ctx.is_main else None,
            caption=f"Semantic drift of {student.description} from its teacher ({teacher.description}); {data}.",
            batch_size=ctx.cfg.batch_size,
            rank=ctx.rank,
            world_size=ctx.world_size,
            autocast=ctx.autocast,
            writer=writer,
        )
    finally:
        if writer is not None:
            writer.close()
    last = rows[-1]
    lowest = min(rows, key=lambda r: r["cka"])
    metrics = {
        "last-block cosine": MetricValue(
            last["cosine"], provenance={"definition": f"mean token cosine at block {int(last['layer'])}"}
        ),
        "last-block CKA": MetricValue(
            last["cka"], provenance={"definition": f"linear CKA over tokens at block {int(last['layer'])}"}
        ),
        "lowest CKA": MetricValue(
            lowest["cka"],
            provenance={"definition": "lowest linear CKA over the blocks", "block": int(lowest["layer"])},
        ),
    }
    per_block = ", ".join(f"{int(r['layer'])}: {r['cosine']:.4f} / {r['cka']:.4f}" for r in rows)
    notes = [f"{NAME} per block (cosine / CKA): {per_block}; table and plot: {DRIFT_MD}, {DRIFT_PNG}"]
    provenance = {
        "samples": count,
        "data": data,
        "tokens": TOKENS,
        "teacher": teacher.description,
        "student_model_hash": student.model_hash(),
        "teacher_model_hash": teacher.model_hash(),
    }
    return BenchmarkRun(metrics, provenance, notes)


BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark(
        name=NAME,
        family="understanding",
        title="semantic drift of the student from its teacher, held-out embedded scenes",
        metrics=METRICS,
        references=references.embedded(METRICS),
        paper=False,
        hint=f"add {NAME} to eval.benchmarks and set eval.num_samples.{NAME}",
        run=_run,
        check=_check,
    ),
)
