"""The ``eval:`` config section: which benchmarks ``python -m uniflow eval`` runs, on what, how."""

from __future__ import annotations

from dataclasses import dataclass, field

from uniflow.config import ConfigError, choice
from uniflow.flow import SAMPLERS

EVAL_PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")


@dataclass
class EvalConfig:
    """The benchmark suite (``python -m uniflow eval``); see ``uniflow/evaluation``.

    Every paper benchmark appears in the results table; those not listed in ``benchmarks`` (or not
    implemented yet) say "not run" and why. The benchmark names used as keys (``data``,
    ``fid_reference``, ``num_samples``) are checked against the registry before any work, by
    ``uniflow.evaluation.suite.enabled_benchmarks``: the registry is built from the adapters, which
    import this module, so the schema cannot list the names itself.
    """

    # Registry names (``python -m uniflow eval --list``): embedded_photos, embedded_scenes,
    # imagenet_recon, coco_recon, imagenet_gen, ...
    benchmarks: list[str] = field(
        default_factory=lambda: [
            "embedded_photos",
            "embedded_scenes",
            "embedded_drift",
            "embedded_vqa",
            "embedded_probe_cls",
            "embedded_probe_seg",
            "embedded_probe_depth",
            "embedded_probe_det",
        ]
    )
    # A ``save_pretrained`` tokenizer directory; None: <output_dir>/<name>/tokenizer.
    tokenizer: str | None = None
    # An MLLM probe run (`python -m uniflow train experiments/mllm/...`) that answers the understanding
    # benchmarks; None: the newest run beside the tokenizer run whose vision tokens are this tokenizer's.
    mllm: str | None = None
    # Decoding; None keeps the tokenizer's own (tokenizer.flow.steps / sampler).
    steps: int | None = None
    sampler: str | None = field(default=None, metadata={"choices": (None, *SAMPLERS)})
    # Tokenizer autocast; Inception always runs in float32 (the FID protocol).
    precision: str = choice("32-true", *EVAL_PRECISIONS)
    # "auto": this rank's CUDA device if there is one, else CPU.
    device: str = "auto"
    batch_size: int = 50
    num_workers: int = 4
    # Decoding noise of sample i is drawn from seed (seed, i): results do not depend on batching or ranks.
    seed: int = 0
    # Samples per benchmark. Embedded sets are generated, so they need a count; a dataset on disk
    # without an entry is evaluated in full. rFID from a few hundred samples is noisy and biased up.
    num_samples: dict[str, int] = field(
        default_factory=lambda: {
            "embedded_photos": 200,
            "embedded_scenes": 200,
            "embedded_drift": 256,
            # Held-out scenes of each probe row; the probes train on four times as many.
            "embedded_probe_cls": 256,
            "embedded_probe_seg": 256,
            "embedded_probe_depth": 256,
            "embedded_probe_det": 256,
            # Held-out scenes of the MLLM probe (about 6.6 questions each), answered by the student's
            # and the teacher's runs of `make train-mllm`.
            "embedded_vqa": 48,
        }
    )
    # Side of the ADM centre crop for ImageNet and COCO (the paper's 256 px protocol).
    image_size: int = 256
    # Each benchmark's dataset, keyed by its registry name, so a new benchmark adds no key here:
    # eval.data.imagenet_recon=/data/imagenet/val, eval.data.imagenet_gen=samples.npz. The layout
    # each expects: `python -m uniflow eval --list` and benchmarks/README.md.
    data: dict[str, str] = field(default_factory=dict)
    # FID reference statistics keyed by benchmark: ADM's reference batch for imagenet_gen
    # (VIRTUAL_imagenet256_labeled.npz); for reconstruction, optional `python -m uniflow data ref-stats`
    # files of the same cropped images, which replace the originals' Inception pass when they match.
    fid_reference: dict[str, str] = field(default_factory=dict)
    # FID Inception weights (torch-fidelity format); None resolves them (see uniflow/metrics/inception.py).
    inception_weights: str | None = None
    # torchvision VGG16 weights for LPIPS; None looks in the usual places, else LPIPS is reported n/a.
    lpips_weights: str | None = None
    # Where results.json / results.md go; None: <run dir>/eval.
    output_dir: str | None = None


def embedded_count(cfg: EvalConfig, name: str, minimum: int = 2) -> int:
    """``eval.num_samples.<name>`` of an embedded row: its data is generated, so the count must be given."""
    count = cfg.num_samples.get(name)
    if count is None or count < minimum:
        raise ConfigError(
            f"eval.num_samples.{name} must be set to at least {minimum} (got {count}): the set is generated"
        )
    return count
