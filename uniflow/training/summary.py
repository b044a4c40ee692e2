"""End-of-run evaluation of a trained tokenizer, printed and written to ``metrics.json``.

- Reconstruction: PSNR and SSIM of held-out real-photo crops (the photos' validation regions,
  never seen in training), decoded with a fixed noise draw and ``summary.sample_steps`` Euler steps.
- Semantics: a linear probe (logistic regression on mean-pooled last-layer patch tokens, fitted on
  training-split scenes, scored on held-out scenes) of the teacher and of the trained student; the
  teacher-head transfer accuracy (the teacher's own classifier run on the student's tokens), which
  falls to chance when the student's features drift even where a retrained probe does not notice;
  and the mean cosine between the student's and the teacher's last-layer tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.utils import make_grid

from uniflow.data.datamodule import heldout_photo_crops, heldout_scenes, probe_train_scenes
from uniflow.encoders import EncoderFeatures, build_encoder
from uniflow.metrics import psnr, ssim
from uniflow.stages import RunConfig
from uniflow.tokenizer import UniFlowTokenizer
from uniflow.training.pretrain import classify_tokens, load_pretrained_classifier

GRID_FILE = "reconstructions.png"

FeatureFn = Callable[[torch.Tensor], EncoderFeatures]


def _batches(dataset: Dataset, batch_size: int) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)


@torch.no_grad()
def reconstruction_metrics(
    tokenizer: UniFlowTokenizer, dataset: Dataset, steps: int, batch_size: int, seed: int = 0
) -> dict[str, float]:
    """Mean PSNR (dB) and SSIM over ``dataset`` with ``steps`` Euler steps and a fixed noise draw."""
    generator = torch.Generator().manual_seed(seed)
    psnrs, ssims = [], []
    for batch in _batches(dataset, batch_size):
        recon = tokenizer.reconstruct(batch["image"], steps, generator=generator)
        psnrs.append(psnr(batch["image"], recon))
        ssims.append(ssim(batch["image"], recon))
    return {"psnr": torch.cat(psnrs).mean().item(), "ssim": torch.cat(ssims).mean().item()}


@torch.no_grad()
def reconstruction_grid(
    tokenizer: UniFlowTokenizer, images: torch.Tensor, sample_steps: list[int], seed: int = 0
) -> torch.Tensor:
    """The originals in the first row, then one row of reconstructions per entry of ``sample_steps``
    (each from the same noise seed); a float 3 x H x W image on the CPU."""
    rows = [images] + [
        tokenizer.reconstruct(images, steps, generator=torch.Generator(images.device).manual_seed(seed))
        for steps in sample_steps
    ]
    return make_grid(torch.cat(rows).float().cpu(), nrow=images.shape[0], padding=2, pad_value=1.0)


def write_grid(
    tokenizer: UniFlowTokenizer, images: torch.Tensor, sample_steps: list[int], path: Path, seed: int = 0
) -> None:
    """:func:`reconstruction_grid` as a PNG."""
    grid = reconstruction_grid(tokenizer, images, sample_steps, seed)
    Image.fromarray(grid.mul(255).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()).save(path)


@torch.no_grad()
def _features(fn: FeatureFn, dataset: Dataset, batch_size: int) -> tuple[list[EncoderFeatures], np.ndarray]:
    feats, labels = [], []
    for batch in _batches(dataset, batch_size):
        f = fn(batch["image"])
        feats.append(EncoderFeatures(layers=[f.last], prefix=[f.prefix[-1]], grid=f.grid))
        labels.append(batch["label"].numpy())
    return feats, np.concatenate(labels)


def _pooled(features: list[EncoderFeatures]) -> np.ndarray:
    return torch.cat([f.last.float().mean(dim=1) for f in features]).numpy()


def linear_probe_accuracy(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray
) -> float:
    """Logistic regression on standardised features: accuracy on the test set."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    probe.fit(train_x, train_y)
    return float(probe.score(test_x, test_y))


@torch.no_grad()
def _head_accuracy(classifier: torch.nn.Module, features: list[EncoderFeatures], labels: np.ndarray) -> float:
    predictions = torch.cat([classify_tokens(classifier, f.prefix[-1], f.last).argmax(-1) for f in features])
    return float((predictions.numpy() == labels).mean())


def evaluate_tokenizer(
    cfg: RunConfig, tokenizer: UniFlowTokenizer, directory: Path | None = None
) -> dict[str, Any]:
    """All summary numbers for ``tokenizer`` trained under ``cfg``; writes the grid PNG into ``directory``."""
    s, size, seed = cfg.summary, cfg.tokenizer.image_size, cfg.data.seed
    tokenizer = tokenizer.eval()
    crops = heldout_photo_crops(s.photo_crops, size, seed)
    result: dict[str, Any] = {
        "reconstruction": {
            "data": f"{s.photo_crops} held-out real-photo crops, {size} px",
            "sample_steps": s.sample_steps,
            **reconstruction_metrics(tokenizer, crops, s.sample_steps, s.batch_size),
        }
    }
    if directory is not None:
        picks = torch.stack([crops[i]["image"] for i in range(min(8, len(crops)))])
        steps = sorted({s.sample_steps, *cfg.trainer.grid_sample_steps})
        write_grid(tokenizer, picks, steps, directory / GRID_FILE)
        result["reconstruction"]["grid"] = {
            "file": GRID_FILE,
            "rows": ["original", *[f"{k} steps" for k in steps]],
        }

    teacher = build_encoder(cfg.tokenizer.encoder).eval()

    def teacher_features(images: torch.Tensor) -> EncoderFeatures:
        return teacher(teacher.normalize(tokenizer.pad(images)))

    train_scenes = probe_train_scenes(s.probe_train, size, seed, annotations=False)  # labels are enough
    test_scenes = heldout_scenes(s.probe_test, size, seed, annotations=False)
    probe: dict[str, Any] = {
        "data": f"fit on {s.probe_train} training scenes, scored on {s.probe_test} held-out"
    }
    test_feats: dict[str, list[EncoderFeatures]] = {}
    for name, fn in (("teacher", teacher_features), ("student", tokenizer.encode_features)):
        train_f, train_y = _features(fn, train_scenes, s.batch_size)
        test_f, test_y = _features(fn, test_scenes, s.batch_size)
        probe[name] = linear_probe_accuracy(_pooled(train_f), train_y, _pooled(test_f), test_y)
        test_feats[name] = test_f
    result["linear_probe"] = probe
    cosines = [
        F.cosine_similarity(a.last.float(), b.last.float(), dim=-1).mean()
        for a, b in zip(test_feats["student"], test_feats["teacher"])
    ]
    result["token_cosine_student_teacher"] = float(torch.stack(cosines).mean())

    checkpoint = cfg.tokenizer.encoder.checkpoint
    classifier = load_pretrained_classifier(cfg.tokenizer.encoder, checkpoint) if checkpoint else None
    if classifier is not None:
        result["teacher_head"] = {
            "data": f"{s.probe_test} held-out scenes",
            "teacher": _head_accuracy(classifier, test_feats["teacher"], test_y),
            "student": _head_accuracy(classifier, test_feats["student"], test_y),
        }
    return result


def format_summary(result: dict[str, Any]) -> str:
    """A short human-readable table of :func:`evaluate_tokenizer`'s numbers."""
    rec, probe = result["reconstruction"], result["linear_probe"]
    lines = [
        f"reconstruction ({rec['data']}, {rec['sample_steps']} Euler step(s)): "
        f"PSNR {rec['psnr']:.2f} dB, SSIM {rec['ssim']:.4f}",
        f"linear probe ({probe['data']}): teacher {100 * probe['teacher']:.1f}%, "
        f"student {100 * probe['student']:.1f}%",
    ]
    if "teacher_head" in result:
        head = result["teacher_head"]
        lines.append(
            f"teacher-head transfer ({head['data']}): on teacher tokens {100 * head['teacher']:.1f}%, "
            f"on student tokens {100 * head['student']:.1f}%"
        )
    lines.append(f"student-teacher token cosine: {result['token_cosine_student_teacher']:.3f}")
    if "precision" in result:
        lines.append(f"precision: {result['precision']['precision']} ({result['precision']['reason']})")
    return "\n".join(lines)
