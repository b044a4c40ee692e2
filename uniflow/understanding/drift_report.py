"""The semantic drift report: per block, how far a tokenizer's student has moved from its teacher.

Both encoders read the same held-out images through :class:`~uniflow.understanding.features.FeatureSource`;
block ``l`` of the student is paired with block ``l`` of the teacher, token by token, and
:class:`~uniflow.metrics.drift.SemanticDrift` streams the mean cosine and linear CKA of each pair
(sums that add up across batches and ranks). This is the layer-wise picture the adaptive
distillation weights act on: without distillation the later blocks, which the latent and the
decoder pull on hardest, are expected to drift first.

Outputs: the rows (one per block), a Markdown table and a PNG plot of both curves over the blocks
(written atomically), and the same table and plot in TensorBoard when a ``SummaryWriter`` is given.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from torch.utils.data import Dataset

from uniflow.io import atomic_write_bytes, atomic_write_text
from uniflow.metrics.drift import SemanticDrift
from uniflow.understanding.features import FeatureSource, image_batches, rank_share

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

DRIFT_MD = "drift.md"
DRIFT_PNG = "drift.png"
TENSORBOARD_TAG = "semantic_drift"


def drift_rows(
    student: FeatureSource,
    teacher: FeatureSource,
    dataset: Dataset,
    *,
    batch_size: int = 64,
    rank: int = 0,
    world_size: int = 1,
    autocast: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext,
) -> list[dict[str, float]]:
    """Per block (1-based ``layer``): mean token ``cosine`` and linear ``cka``, student against teacher.

    This rank reads its share of ``dataset`` (each sample on one rank); under torch.distributed the
    metric sums every rank's statistics, so every rank returns the rows of the whole set.
    """
    if student.depth != teacher.depth:
        raise ValueError(
            f"the student has {student.depth} blocks and the teacher {teacher.depth}: drift pairs them block by block"
        )
    drift = SemanticDrift(student.depth, student.width, teacher.width).to(student.device)
    for images, _ in image_batches(dataset, rank_share(len(dataset), rank, world_size), batch_size):
        with autocast():
            ours, theirs = student.blocks(images), teacher.blocks(images)
        if ours.grid != theirs.grid:
            raise ValueError(f"token grids differ: student {ours.grid}, teacher {theirs.grid}")
        drift.update(ours.layers, [t.to(student.device) for t in theirs.layers])
    return drift.compute()


def drift_markdown(rows: list[dict[str, float]], caption: str = "") -> str:
    """The rows as a Markdown table (``caption`` above it, when given)."""
    lines = [caption, ""] if caption else []
    lines += ["| block | mean cosine | linear CKA |", "|---:|---:|---:|"]
    lines += [f"| {int(r['layer'])} | {r['cosine']:.4f} | {r['cka']:.4f} |" for r in rows]
    return "\n".join(lines) + "\n"


def _plot(rows: list[dict[str, float]], title: str) -> tuple[bytes, np.ndarray]:
    """The PNG bytes and the RGB pixels of both curves over the blocks."""
    # The Agg canvas directly, not pyplot: no global figure state or backend switch in a library.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    layers = [int(r["layer"]) for r in rows]
    figure = Figure(figsize=(5.0, 3.2), dpi=100)
    canvas = FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.plot(layers, [r["cosine"] for r in rows], marker="o", label="mean cosine")
    axes.plot(layers, [r["cka"] for r in rows], marker="s", label="linear CKA")
    lowest = min([0.0, *(v for r in rows for v in (r["cosine"], r["cka"]) if np.isfinite(v))])
    axes.set_ylim(lowest - 0.02, 1.02)
    axes.set_xticks(layers)
    axes.set_xlabel("block")
    axes.set_ylabel("student vs teacher")
    axes.set_title(title, fontsize=9)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower left")
    figure.tight_layout()
    canvas.draw()
    pixels = np.asarray(canvas.buffer_rgba())[..., :3].copy()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue(), pixels


def write_drift_report(
    rows: list[dict[str, float]],
    directory: str | Path,
    *,
    caption: str = "",
    writer: SummaryWriter | None = None,
    step: int = 0,
) -> tuple[Path, Path]:
    """Write ``drift.md`` and ``drift.png`` into ``directory`` atomically; log both to ``writer``."""
    directory = Path(directory)
    table = drift_markdown(rows, caption)
    png, pixels = _plot(rows, "semantic drift: student vs teacher, per block")
    md_path = atomic_write_text(directory / DRIFT_MD, table)
    png_path = atomic_write_bytes(directory / DRIFT_PNG, png)
    if writer is not None:
        writer.add_text(f"{TENSORBOARD_TAG}/table", table, step)
        writer.add_image(f"{TENSORBOARD_TAG}/plot", pixels, step, dataformats="HWC")
        writer.flush()
    return md_path, png_path


def semantic_drift_report(
    student: FeatureSource,
    teacher: FeatureSource,
    dataset: Dataset,
    directory: str | Path | None,
    *,
    caption: str = "",
    batch_size: int = 64,
    rank: int = 0,
    world_size: int = 1,
    autocast: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext,
    writer: SummaryWriter | None = None,
    step: int = 0,
) -> list[dict[str, float]]:
    """:func:`drift_rows`, then the table and plot into ``directory`` (None: compute only, as on
    ranks other than 0). Returns the rows."""
    rows = drift_rows(
        student, teacher, dataset, batch_size=batch_size, rank=rank, world_size=world_size, autocast=autocast
    )
    if directory is not None:
        write_drift_report(rows, directory, caption=caption, writer=writer, step=step)
    return rows
