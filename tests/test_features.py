"""Frozen features: one path for a tokenizer's student and the raw encoder, every block and pooling,
and a disk cache that computes each sample exactly once across ranks and is reused afterwards."""

from __future__ import annotations

import pytest
import torch

from uniflow.understanding import features
from uniflow.understanding.features import (
    FeatureCache,
    FeatureSource,
    cached_features,
    extract_part,
    pad_to_stride,
)

NUM = 7


def _images(num: int = NUM, size: int = 32) -> torch.Tensor:
    return torch.rand(num, 3, size, size, generator=torch.Generator().manual_seed(1))


def _counted(source: FeatureSource) -> list[int]:
    """Images through the source's encoder, per call (a forward hook sees every model run)."""
    seen: list[int] = []
    source.encoder.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[0]))
    return seen


def test_untrained_student_and_raw_encoder_give_the_same_features_through_one_path(
    tiny_tokenizer, monkeypatch
):
    tok = tiny_tokenizer
    student = FeatureSource.of_tokenizer(tok)
    raw = FeatureSource.baseline(tok.cfg)  # build_encoder on the config's tokenizer.encoder
    # The encoder an untrained tokenizer started from is its teacher: give the raw build those weights.
    raw.encoder.load_state_dict(tok.teacher.state_dict())
    assert raw.stride == student.stride and "random initialisation" in raw.description

    callers: list[FeatureSource] = []
    blocks = FeatureSource.blocks

    def spy(self: FeatureSource, images: torch.Tensor):
        callers.append(self)
        return blocks(self, images)

    monkeypatch.setattr(FeatureSource, "blocks", spy)
    images = _images(3, size=28)  # not a multiple of the stride: padding is part of the path
    for layer in (1, -1):
        for pooling in features.POOLINGS:
            ours, theirs = student.extract(images, layer, pooling), raw.extract(images, layer, pooling)
            torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    assert {id(c) for c in callers} == {id(student), id(raw)} and len(callers) == 12
    # The padding is the tokenizer's own, and the last block is what semantic_tokens gives.
    assert torch.equal(pad_to_stride(images, tok.stride), tok.pad(images))
    torch.testing.assert_close(student.extract(images, -1, "dense"), tok.semantic_tokens(images))


def test_blocks_poolings_and_the_latent(tiny_tokenizer, tmp_path):
    source, images = FeatureSource.of_tokenizer(tiny_tokenizer), _images(2)
    depth, width = source.depth, source.width
    assert source.extract(images, 1, "pooled").shape == (2, width)
    dense = source.extract(images, 1, "dense")
    grid = source.extract(images, 1, "grid")
    assert dense.shape == (2, 16, width) and grid.shape == (2, width, 4, 4)
    # Row-major grid: token (row 1, column 2) is dense token 1 * 4 + 2.
    torch.testing.assert_close(grid[:, :, 1, 2], dense[:, 6])
    torch.testing.assert_close(source.extract(images, 1, "pooled"), dense.mean(1))
    torch.testing.assert_close(source.extract(images, depth), source.extract(images, -1))
    torch.testing.assert_close(source.extract(images, "latent", "grid"), tiny_tokenizer.encode(images))
    assert source.extract(images, "latent", "pooled").shape == (2, tiny_tokenizer.cfg.decoder.latent_dim)
    for bad in (0, depth + 1, -depth - 1, "last"):
        with pytest.raises(ValueError, match="layer must be a block"):
            source.extract(images, bad)
    with pytest.raises(ValueError, match="pooling must be one of"):
        source.extract(images, -1, "max")
    raw = FeatureSource.baseline(tiny_tokenizer.cfg)
    with pytest.raises(ValueError, match="has no latent"):
        raw.extract(images, "latent")
    # A tokenizer export reads back as the same source: same features, same cache key.
    tiny_tokenizer.save_pretrained(tmp_path / "tokenizer")
    exported = FeatureSource.from_pretrained(tmp_path / "tokenizer")
    torch.testing.assert_close(
        exported.extract(images, "latent", "grid"), source.extract(images, "latent", "grid")
    )
    assert exported.model_hash() == source.model_hash()


@pytest.mark.parametrize(("num", "world_size"), [(NUM, 1), (NUM, 2), (NUM, 3), (2, 3)])
def test_each_sample_is_extracted_exactly_once_across_ranks(tiny_tokenizer, tmp_path, num, world_size):
    source, images = FeatureSource.of_tokenizer(tiny_tokenizer), _images(num)
    seen = _counted(source)
    cache = FeatureCache.for_source(source, "toy", "val", num, layer=-1, pooling="dense", root=tmp_path)
    for rank in range(world_size):  # simulated ranks, one after another: no process group
        assert cache.complete_world_size() is None
        assert extract_part(source, images, cache, rank=rank, world_size=world_size, batch_size=2)
        assert cache.part(rank, world_size).is_file()
    assert sum(seen) == num  # the sampler's wrapped padding is never computed
    assert cache.complete_world_size() == world_size
    assert not list(cache.directory.glob(".*.partial"))

    stored, index = cache.load()
    assert torch.equal(index, torch.arange(num))
    torch.testing.assert_close(stored, source.extract(images, -1, "dense"))
    seen.clear()
    # Complete: no rank of any world size runs the model again, and a one-process reader gets all of it.
    assert not extract_part(source, images, cache, rank=0, world_size=world_size)
    got = cached_features(source, images, dataset_name="toy", split="val", pooling="dense", root=tmp_path)
    assert seen == [] and torch.equal(got, stored)


def test_a_rank_that_restarts_keeps_its_written_part(tiny_tokenizer, tmp_path):
    source, images = FeatureSource.of_tokenizer(tiny_tokenizer), _images()
    seen = _counted(source)
    cache = FeatureCache.for_source(source, "toy", "val", NUM, root=tmp_path)
    assert extract_part(source, images, cache, rank=1, world_size=2)
    assert not extract_part(source, images, cache, rank=1, world_size=2)  # rank 1 again: its part exists
    with pytest.raises(FileNotFoundError, match="not complete"):
        cache.load()
    assert extract_part(source, images, cache, rank=0, world_size=2)
    assert sum(seen) == NUM and cache.load()[0].shape == (NUM, source.width)


def test_the_cache_is_reused_and_keyed_by_model_layer_pooling_dataset_and_split(tiny_tokenizer, tmp_path):
    source, images = FeatureSource.of_tokenizer(tiny_tokenizer), _images()
    seen = _counted(source)

    def get(**key) -> torch.Tensor:
        key = {"dataset_name": "toy", "split": "val", "layer": -1, "pooling": "pooled", **key}
        return cached_features(source, images, root=tmp_path, batch_size=4, **key)

    first = get()
    assert sum(seen) == NUM
    seen.clear()
    assert torch.equal(get(), first) and seen == []  # the second call does not run the model
    assert torch.equal(get(layer=source.depth), first) and seen == []  # -1 is the last block
    for other in ({"layer": 1}, {"pooling": "dense"}, {"split": "train"}, {"dataset_name": "other"}):
        seen.clear()
        get(**other)
        assert sum(seen) == NUM, other
    before = source.model_hash()
    with torch.no_grad():
        tiny_tokenizer.student.model.blocks[-1].mlp.fc2.bias.add_(1.0)
    assert source.model_hash() != before
    seen.clear()
    assert not torch.equal(get(), first) and sum(seen) == NUM  # changed weights: not the old features
    with pytest.raises(ValueError, match="plain name"):
        FeatureCache.for_source(source, "../escape", "val", NUM, root=tmp_path)
