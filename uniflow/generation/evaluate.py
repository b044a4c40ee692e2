"""End-of-run evaluation of a generator trained on embedded-scene latents, printed and written to metrics.json.

On ``summary.num_samples`` held-out scenes (never encoded into the training cache):

- Frechet distance (FID Inception, 2048-d pool features) to the held-out scenes of the generator's
  samples without guidance and with ``generator.sampling.cfg_scale``, equal counts per class;
- the same distance for two baselines measured in the same run: latents drawn from a per-channel
  Gaussian fitted to the real latents (the cache's statistics), decoded (what a generator that
  learned only the first two moments per channel would give); and the tokenizer's reconstructions
  of the held-out scenes (what the decoder allows at best: a generator on these latents cannot do
  better than its tokenizer's reconstructions); and the floor: the distance of as many other
  held-out scenes (real against real: what the sample count alone adds);
- the accuracy of the encoder-pretraining classifier on the generated images per requested class
  (and on the real held-out scenes, for reference);
- the accuracy of a linear classifier fitted on the training cache's standardised latents, on the
  sample latents (and on the held-out scenes' latents): it reads the class before the decoder, so
  the printout tells conditioning that fails from a decoder that hides the class.

Frechet distances from a few hundred samples are biased upward; they compare the rows of one
printout, not numbers of other papers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Subset
from torchvision.utils import make_grid

from uniflow.generation.pretrained import LatentGenerator

SAMPLES_FILE = "samples.png"
# Training latents the latent-space probe is fitted on (evenly spread over the cache).
LATENT_PROBE_SAMPLES = 2048


def fit_latent_probe(latents: str | Path, normalizer: Any, max_samples: int = LATENT_PROBE_SAMPLES) -> Any:
    """A multinomial logistic regression (scikit-learn) from standardised, flattened latents to the class.

    Fitted on up to ``max_samples`` latents of the cache at ``latents``; ``predict`` takes standardised
    latents ``B x C x h x w`` flattened to ``B x (C h w)``.
    """
    from sklearn.linear_model import LogisticRegression

    from uniflow.generation.latent_cache import LatentShards

    shards = LatentShards(latents)
    if shards.labels.unique().numel() < 2:
        raise ValueError(f"the latent probe needs at least two classes in {latents}")
    picks = torch.linspace(0, len(shards) - 1, min(max_samples, len(shards))).round().long().unique()
    z = torch.stack([shards[int(i)]["latent"] for i in picks])
    features = normalizer.normalize(z).flatten(1).numpy()
    return LogisticRegression(max_iter=1000).fit(features, shards.labels[picks].numpy())


def _load_classifier(
    cfg: Any, tokenizer_dir: str | Path
) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor] | None:
    """The pretrained encoder's classifier and its input normalisation, or None if there is none."""
    from uniflow.encoders.timm_encoder import timm_normalization
    from uniflow.tokenizer.config import load_tokenizer_config
    from uniflow.training.pretrain import load_pretrained_classifier

    encoder = load_tokenizer_config(Path(tokenizer_dir) / "config.yaml").encoder
    path = cfg.summary.classifier or encoder.checkpoint
    if not path or not Path(path).is_file():
        return None
    classifier = load_pretrained_classifier(encoder, path)
    if classifier is None:
        return None
    mean, std = timm_normalization(encoder, classifier)
    return classifier, torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)


@torch.no_grad()
def evaluate_embedded_generator(cfg: Any, export: Path, directory: Path | None = None) -> dict[str, Any]:
    """Every summary number of the generator exported at ``export`` (see the module docstring)."""
    from uniflow.data.datamodule import heldout_scenes
    from uniflow.metrics import FIDMetric
    from uniflow.metrics.inception import InceptionFeatureExtractor

    s, sampling = cfg.summary, cfg.generator.sampling
    bundle = LatentGenerator.from_pretrained(export)
    tokenizer = bundle.tokenizer_ref.load()
    size = bundle.image_size
    extractor = InceptionFeatureExtractor()
    n = s.num_samples
    # Scenes n..2n-1 are a second real set: their distance to the first n is what sampling alone
    # gives at this n (Frechet distances from a few hundred samples are biased upward).
    scenes = heldout_scenes(2 * n, size, cfg.data.seed, annotations=False)
    real, second = Subset(scenes, range(n)), Subset(scenes, range(n, 2 * n))
    classifier = _load_classifier(cfg, bundle.tokenizer_ref.path)

    def classify(images: torch.Tensor) -> torch.Tensor:
        assert classifier is not None
        model, mean, std = classifier
        return model((images - mean) / std).argmax(-1)

    def decode(z: torch.Tensor, seed: int) -> torch.Tensor:
        return bundle.decode(tokenizer, z, torch.Generator().manual_seed(seed))

    probe = fit_latent_probe(cfg.generator.latents, bundle.normalizer)

    def probe_hits(z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        predicted = probe.predict(bundle.normalizer.normalize(z).flatten(1).numpy())
        return torch.from_numpy(predicted) == labels

    metrics = {name: FIDMetric(extractor) for name in ("real", "second_real", "reconstruction", "gaussian")}
    for batch in DataLoader(second, batch_size=s.batch_size, shuffle=False):
        metrics["second_real"].update(batch["image"])
    latent_hits: dict[str, list[torch.Tensor]] = {"real": [], "unguided": [], "guided": []}
    real_correct: list[torch.Tensor] = []
    # The ceiling for samples: the classifier on the tokenizer's own reconstructions of real scenes
    # (a generator that matched the latent distribution exactly would score this, not `real`).
    reconstruction_correct: list[torch.Tensor] = []
    for k, batch in enumerate(DataLoader(real, batch_size=s.batch_size, shuffle=False)):
        images = batch["image"]
        metrics["real"].update(images)
        z = tokenizer.encode(images)
        latent_hits["real"].append(probe_hits(z, batch["label"]))
        reconstruction = decode(z, k)
        metrics["reconstruction"].update(reconstruction)
        # The baseline: every latent entry drawn independently from its channel's N(mean, std).
        gaussian = torch.Generator().manual_seed(10_000 + k)
        noise = torch.randn(z.shape, generator=gaussian)
        metrics["gaussian"].update(decode(bundle.normalizer.denormalize(noise), k))
        if classifier is not None:
            real_correct.append(classify(images) == batch["label"])
            reconstruction_correct.append(classify(reconstruction) == batch["label"])

    labels = torch.arange(n) % bundle.num_classes
    scales = {"unguided": 1.0, "guided": sampling.cfg_scale}
    correct: dict[str, torch.Tensor] = {}
    grid_rows: list[torch.Tensor] = []
    for name, scale in scales.items():
        metrics[name] = FIDMetric(extractor)
        hits = []
        for k, start in enumerate(range(0, n, sampling.batch_size)):
            chunk = labels[start : start + sampling.batch_size]
            # The same seeds with and without guidance: the rows differ by the guidance alone.
            z = bundle.sample_latents(chunk, generator=torch.Generator().manual_seed(k), cfg_scale=scale)
            latent_hits[name].append(probe_hits(z, chunk))
            images = decode(z, k)
            metrics[name].update(images)
            if classifier is not None:
                hits.append(classify(images) == chunk)
            if k == 0 and name == "guided":
                per_class = [images[chunk == c][:8] for c in range(bundle.num_classes)]
                grid_rows = [row for row in per_class if len(row) == min(len(r) for r in per_class)]
        if hits:
            correct[name] = torch.cat(hits)

    result: dict[str, Any] = {
        "frechet_distance": {
            "data": f"{n} held-out scenes, {size} px; FID Inception features; samples equal per class",
            **{
                name: metrics[name].compute(metrics["real"])
                for name in (*scales, "gaussian", "reconstruction", "second_real")
            },
        },
        "sampling": {
            "model": cfg.generator.model,
            "steps": sampling.steps,
            "sampler": sampling.sampler,
            "cfg_scale": sampling.cfg_scale,
            "guidance_interval": sampling.guidance_interval,
            "decode_steps": sampling.decode_steps or tokenizer.cfg.flow.steps,
            "weights": f"EMA (decay {cfg.optim.ema_decay:g})" if cfg.optim.ema_decay > 0 else "live",
        },
    }
    result["latent_probe_accuracy"] = {
        "data": f"a linear classifier of the standardised latents, fitted on {LATENT_PROBE_SAMPLES} or "
        "fewer training latents of the cache; its prediction = the requested class",
        **{name: float(torch.cat(hits).float().mean()) for name, hits in latent_hits.items()},
    }
    if classifier is not None:
        result["classifier_accuracy"] = {
            "data": "the encoder-pretraining classifier's prediction = the requested class",
            "real": float(torch.cat(real_correct).float().mean()),
            "reconstruction": float(torch.cat(reconstruction_correct).float().mean()),
            **{name: float(hit.float().mean()) for name, hit in correct.items()},
            "guided_per_class": {
                bundle.classes[c]: float(correct["guided"][labels == c].float().mean())
                for c in range(bundle.num_classes)
            },
        }
    if directory is not None and grid_rows:
        grid = make_grid(torch.cat(grid_rows), nrow=len(grid_rows[0]), padding=2, pad_value=1.0)
        array = grid.mul(255).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
        Image.fromarray(np.ascontiguousarray(array)).save(directory / SAMPLES_FILE)
        result["samples_grid"] = {
            "file": SAMPLES_FILE,
            "rows": bundle.classes,
            "cfg_scale": sampling.cfg_scale,
        }
    return result


def format_generator_summary(result: dict[str, Any]) -> str:
    """The printout of :func:`evaluate_embedded_generator`'s numbers."""
    fd, s = result["frechet_distance"], result["sampling"]
    interval = f", interval {s['guidance_interval']}" if s["guidance_interval"] else ""
    lines = [
        f"generator: {s['model']}, {s['weights']} weights, {s['steps']} {s['sampler']} steps, "
        f"decoded with {s['decode_steps']} step(s)",
        f"Frechet distance to {fd['data']}:",
        f"  samples, no guidance:             {fd['unguided']:8.2f}",
        f"  samples, guidance {s['cfg_scale']:<4g}{interval}:      {fd['guided']:8.2f}",
        f"  baseline: per-channel Gaussian:   {fd['gaussian']:8.2f}",
        f"  baseline: tokenizer reconstructions: {fd['reconstruction']:5.2f}",
        f"  floor: as many other held-out scenes: {fd['second_real']:8.2f}",
        f"  guided / Gaussian: {fd['guided'] / fd['gaussian']:.2f} (target <= 0.5)",
    ]
    if "classifier_accuracy" in result:
        acc = result["classifier_accuracy"]
        per_class = ", ".join(f"{name} {100 * v:.0f}%" for name, v in acc["guided_per_class"].items())
        lines.append(
            f"classifier gives the requested class: guided {100 * acc['guided']:.1f}% ({per_class}; "
            f"target >= 80%), unguided {100 * acc['unguided']:.1f}%; on real held-out scenes {100 * acc['real']:.1f}%"
        )
        lines.append(
            f"  ceiling: on the tokenizer's reconstructions of those scenes {100 * acc['reconstruction']:.1f}%"
        )
    if "latent_probe_accuracy" in result:
        acc = result["latent_probe_accuracy"]
        lines.append(
            f"linear probe on the latents (before decoding) gives the requested class: guided "
            f"{100 * acc['guided']:.1f}%, unguided {100 * acc['unguided']:.1f}%; on the held-out scenes' "
            f"latents {100 * acc['real']:.1f}%"
        )
    return "\n".join(lines)
