"""The embedded dataset: determinism, disjoint splits, annotations that agree with the pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from uniflow.data.config import DataConfig
from uniflow.data.datamodule import EvalShardSampler, UniFlowDataModule, heldout_photo_crops, heldout_scenes
from uniflow.data.embedded import (
    ATTRIBUTES,
    COLOUR_NAMES,
    NO_LABEL,
    NUM_CLASSES,
    SHAPES,
    CachedDataset,
    EmbeddedMixture,
    EmbeddedScenes,
    render_photo_crop,
    render_scene,
)
from uniflow.data.photos import all_photos, photo_regions

SIZE = 48


def test_scene_is_a_pure_function_of_seed_split_index():
    a, b = render_scene(0, "train", 7, SIZE), render_scene(0, "train", 7, SIZE)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.depth, b.depth)
    assert a.qa == b.qa and a.label == b.label
    assert not np.array_equal(a.image, render_scene(1, "train", 7, SIZE).image)
    assert not np.array_equal(a.image, render_scene(0, "train", 8, SIZE).image)
    assert np.array_equal(render_photo_crop(3, "val", 2, SIZE), render_photo_crop(3, "val", 2, SIZE))


def test_samples_do_not_depend_on_the_loader_worker():
    data = EmbeddedScenes("train", 8, SIZE, seed=5)
    direct = torch.stack([data[i]["image"] for i in range(8)])
    loader = DataLoader(data, batch_size=3, num_workers=2)
    assert torch.equal(torch.cat([b["image"] for b in loader]), direct)


def test_photo_regions_split_every_photo_into_disjoint_train_and_val_columns():
    for photo, train, val in zip(all_photos(), photo_regions("train"), photo_regions("val")):
        assert np.array_equal(np.concatenate([np.asarray(train), np.asarray(val)], axis=1), photo)
        assert val.width >= 0.3 * min(photo.shape[:2]) - 1  # room for the largest crop


def test_train_and_val_scenes_differ():
    train = {render_scene(0, "train", i, SIZE).image.tobytes() for i in range(50)}
    val = {render_scene(0, "val", i, SIZE).image.tobytes() for i in range(50)}
    assert len(train) == 50 and not train & val


@pytest.mark.parametrize("index", range(40))
def test_masks_boxes_depth_and_answers_agree_with_the_scene(index):
    s = render_scene(0, "val", index, SIZE)
    assert s.image.shape == (SIZE, SIZE, 3) and s.image.dtype == np.uint8
    assert s.label == s.objects[0].shape
    assert set(np.unique(s.instance_mask)) <= set(range(len(s.objects) + 1))
    background = s.instance_mask == 0
    assert np.all(s.semantic_mask[background] == 0)
    for k, obj in enumerate(s.objects, start=1):
        ys, xs = np.nonzero(s.instance_mask == k)
        assert len(ys) == obj.area > 0  # every listed object is visible
        x0, y0, x1, y1 = obj.box
        assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)  # tight box
        assert np.all(s.semantic_mask[ys, xs] == obj.shape + 1)
        assert np.allclose(s.depth[ys, xs], obj.depth)
    # Occlusion agrees with depth: shapes are all in front of the ground plane.
    if (~background).any():
        assert s.depth[background].min() > s.depth[~background].max()
    assert s.objects[0].area == max(o.area for o in s.objects)  # "largest" is the dominant shape
    answers = dict(s.qa)
    assert answers["What shape is the largest object?"] == SHAPES[s.label]
    assert answers["What colour is the largest shape?"] == s.objects[0].colour
    assert answers["How many shapes are there?"] == str(len(s.objects))
    assert s.boxes.shape == (len(s.objects), 4) and s.box_labels.tolist() == [o.shape for o in s.objects]


def test_every_class_occurs():
    labels = [render_scene(0, "train", i, 32).label for i in range(200)]
    assert np.bincount(labels, minlength=NUM_CLASSES).min() > 30 and max(labels) < NUM_CLASSES


def test_annotated_items_collate():
    data = heldout_scenes(4, SIZE)
    batch = next(iter(DataLoader(data, batch_size=4)))
    assert batch["image"].shape == (4, 3, SIZE, SIZE) and batch["image"].dtype == torch.float32
    assert batch["mask"].shape == (4, SIZE, SIZE) and batch["depth"].shape == (4, 1, SIZE, SIZE)
    assert batch["label"].dtype == torch.int64


def test_mixture_and_cache():
    mix = EmbeddedMixture("train", 10, SIZE, seed=0, photo_fraction=0.3)
    labels = [mix[i]["label"] for i in range(10)]
    assert labels.count(NO_LABEL) == 3 and all(0 <= x < NUM_CLASSES for x in labels[:7])
    cached = CachedDataset(mix)
    for i in (0, 9):
        assert torch.allclose(cached[i]["image"], mix[i]["image"], atol=1 / 255)
        assert cached[i]["label"] == mix[i]["label"]
    crops = heldout_photo_crops(2, SIZE)
    assert crops[1]["label"] == NO_LABEL and crops[1]["image"].shape == (3, SIZE, SIZE)


def test_scene_attributes_follow_the_scene_and_survive_caching_and_collation():
    dm = UniFlowDataModule.from_config(
        DataConfig(image_size=SIZE, batch_size=6, num_train=6, num_val=2, photo_fraction=0.0), attributes=True
    )
    dm.setup("fit")
    assert isinstance(dm.train_set, CachedDataset)
    batch = next(iter(DataLoader(dm.train_set, batch_size=6)))
    attributes = batch["attributes"]
    assert set(attributes) == set(ATTRIBUTES) and attributes["shapes"].shape == (6, len(SHAPES))
    for i in range(6):
        scene = render_scene(0, "train", i, SIZE)
        assert attributes["colour"][i] == COLOUR_NAMES.index(scene.objects[0].colour)
        assert attributes["count"][i] == len(scene.objects) - 1
        present = {o.shape for o in scene.objects}
        assert attributes["shapes"][i].tolist() == [float(k in present) for k in range(len(SHAPES))]
        uncached = EmbeddedMixture("train", 6, SIZE, attributes=True)[i]["attributes"]
        assert all(torch.equal(uncached[key], attributes[key][i]) for key in ATTRIBUTES)
    assert all(int(attributes[key].max()) < n for key, n in ATTRIBUTES.items())
    with pytest.raises(ValueError, match="photo_fraction=0"):
        EmbeddedMixture("train", 4, SIZE, photo_fraction=0.5, attributes=True)
    with pytest.raises(ValueError, match="embedded"):
        UniFlowDataModule(backend="folder", train_path=".", val_path=".", attributes=True)


def test_datamodule_batches_and_exactly_once_validation():
    cfg = DataConfig(image_size=SIZE, batch_size=8, num_train=40, num_val=13, photo_fraction=0.25)
    dm = UniFlowDataModule.from_config(cfg)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"image", "label"}
    assert batch["image"].shape == (8, 3, SIZE, SIZE) and batch["image"].dtype == torch.float32
    assert batch["image"].min() >= 0 and batch["image"].max() <= 1
    assert batch["label"].dtype == torch.int64
    reference = torch.cat([b["image"] for b in dm.make_val_loader(0, 1)])
    assert len(reference) == 13
    for world in (1, 2, 3):
        seen = [i for rank in range(world) for i in EvalShardSampler(dm.val_set, rank, world)]
        assert sorted(seen) == list(range(13))
        images = torch.cat([b["image"] for rank in range(world) for b in dm.make_val_loader(rank, world)])
        assert len(images) == 13
        assert sorted(images.sum((1, 2, 3)).tolist()) == pytest.approx(
            sorted(reference.sum((1, 2, 3)).tolist())
        )
