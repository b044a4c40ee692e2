"""Evaluation readers: labelled batches (labels, masks, depth, boxes, questions) beside the images,
every sample exactly once across ranks, and the image-only view the reconstruction metrics read."""

from __future__ import annotations

import pytest
import torch
from evaluation_fakes import photo_folder

from uniflow.data.datamodule import heldout_scenes
from uniflow.evaluation.benchmarks.readers import (
    AdmFolderImages,
    LabelledScenes,
    MemoryImages,
    collate_samples,
    sharded_batches,
    sharded_samples,
)


def test_scenes_arrive_as_labelled_batches_with_every_annotation_once_across_ranks():
    source = heldout_scenes(5, size=32, seed=0, annotations=False)
    scenes = LabelledScenes(source, "held-out scenes")
    batches = [b for rank in range(2) for b in sharded_samples(scenes, rank, 2, batch_size=2)]
    seen = [int(i) for b in batches for i, ok in zip(b["index"], b["valid"]) if ok]
    assert sorted(seen) == list(range(5))  # 3 + 3 positions, one of them padding
    assert sum(int((~b["valid"]).sum()) for b in batches) == 1

    batch = batches[0]
    n = len(batch["index"])
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (n, 3, 32, 32)
    assert batch["label"].dtype == torch.int64 and batch["label"].shape == (n,)
    assert batch["semantic"].dtype == torch.int64 and batch["semantic"].shape == (n, 32, 32)
    assert batch["mask"].dtype == torch.int64 and batch["mask"].shape == (n, 32, 32)
    assert batch["depth"].dtype == torch.float32 and batch["depth"].shape == (n, 1, 32, 32)
    # Boxes and questions vary in number per scene: one list entry per sample, matching the scene.
    for position, index in enumerate(batch["index"].tolist()):
        scene = source.scene(index)
        assert int(batch["label"][position]) == scene.label
        torch.testing.assert_close(batch["image"][position], torch.from_numpy(scene.image).permute(2, 0, 1))
        torch.testing.assert_close(batch["semantic"][position], torch.from_numpy(scene.semantic_mask).long())
        torch.testing.assert_close(batch["mask"][position], torch.from_numpy(scene.instance_mask).long())
        torch.testing.assert_close(batch["depth"][position, 0], torch.from_numpy(scene.depth))
        torch.testing.assert_close(batch["boxes"][position], torch.from_numpy(scene.boxes))
        torch.testing.assert_close(batch["labels"][position], torch.from_numpy(scene.box_labels))
        assert list(zip(batch["questions"][position], batch["answers"][position])) == scene.qa


def test_image_only_readers_keep_their_tuple_batches():
    images = MemoryImages(torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8), "random")
    (first, index, valid), *_ = sharded_batches(images, 0, 1, batch_size=4)
    torch.testing.assert_close(first, images.images[:4])
    assert index.tolist() == [0, 1, 2, 3] and valid.all()


def test_class_folders_give_labels_by_sorted_folder_name(tmp_path):
    photo_folder(tmp_path / "n02", 2)
    photo_folder(tmp_path / "n01", 3)
    labelled = AdmFolderImages(tmp_path, 16, labels=True)
    assert labelled.classes == ["n01", "n02"] and len(labelled) == 5
    batch = next(sharded_samples(labelled, 0, 1, batch_size=5))
    assert batch["label"].tolist() == [0, 0, 0, 1, 1] and batch["image"].shape == (5, 3, 16, 16)
    # Without labels the same folder is the image-only set that `data ref-stats` lists.
    plain = AdmFolderImages(tmp_path, 16)
    assert plain.files == labelled.files and isinstance(plain[0], torch.Tensor)


def test_a_batch_keeps_per_sample_fields_as_lists_whatever_their_sizes():
    image = torch.zeros(3, 4, 4, dtype=torch.uint8)
    same_size = [{"image": image, "boxes": torch.zeros(2, 4), "path": f"{i}.jpg"} for i in range(2)]
    batch = collate_samples(same_size)
    # Boxes stay a list even when every sample has as many: their type never depends on the batch.
    assert (
        isinstance(batch["boxes"], list) and len(batch["boxes"]) == 2 and batch["path"] == ["0.jpg", "1.jpg"]
    )
    # Float images in [0, 1], as the data package's probe readers give them, batch too.
    assert collate_samples([{"image": image.float() / 255}])["image"].dtype == torch.float32
    with pytest.raises(ValueError, match="carry different fields"):
        collate_samples([{"image": image, "label": 1}, {"image": image}])
    with pytest.raises(ValueError, match="expected 3 x H x W images, uint8 or float"):
        collate_samples([{"image": image[0]}])
