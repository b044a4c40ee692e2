"""The folder backend: layouts, transforms, corrupt files, errors that name the path, rank sharding."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from uniflow.data.datamodule import UniFlowDataModule
from uniflow.data.embedded import NO_LABEL, render_photo_crop
from uniflow.data.folder import ImageFolderDataset, eval_transform, scan_image_folder, train_transform

SIZE = 32


def make_tree(root: Path, classes: int = 2, per_class: int = 4, seed: int = 0) -> Path:
    """``root/class_k/img_i.jpg``: photo crops of varied sizes and aspect ratios."""
    for c in range(classes):
        (root / f"class_{c}").mkdir(parents=True)
        for i in range(per_class):
            index = c * per_class + i
            crop = render_photo_crop(seed, "train", index, 96)
            w, h = 96 + 16 * (index % 3), 80 + 8 * (index % 4)
            Image.fromarray(crop).resize((w, h)).save(root / f"class_{c}" / f"img_{i}.jpg", quality=95)
    return root


def corrupt(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])  # truncated JPEG


def test_class_tree_and_flat_layouts(tmp_path):
    root = make_tree(tmp_path / "tree")
    samples, classes = scan_image_folder(root)
    assert classes == ["class_0", "class_1"]
    assert [label for _, label in samples] == [0] * 4 + [1] * 4
    flat, no_classes = scan_image_folder(root, mode="flat")
    assert no_classes == [] and len(flat) == 8 and {label for _, label in flat} == {NO_LABEL}
    (root / "class_0" / "notes.txt").write_text("not an image")
    assert len(scan_image_folder(root)[0]) == 8


def test_transforms_give_float_images_of_the_requested_size(tmp_path):
    root = make_tree(tmp_path / "tree", classes=1, per_class=2)
    train = ImageFolderDataset(root, train_transform(SIZE, (0.35, 1.0)), draft_side=SIZE * 2)
    evaluation = ImageFolderDataset(root, eval_transform(SIZE))
    for data in (train, evaluation):
        item = data[1]
        assert item["image"].shape == (3, SIZE, SIZE) and item["image"].dtype == torch.float32
        assert item["image"].min() >= 0 and item["image"].max() <= 1 and item["label"] == 0
    # Evaluation is the centre square, resized once: the same pixels as doing it by hand.
    with Image.open(evaluation.samples[0][0]) as img:
        w, h = img.size
        side = min(w, h)
        box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
        by_hand = np.asarray(img.convert("RGB").resize((SIZE, SIZE), Image.BILINEAR, box=box))
    expected = torch.from_numpy(by_hand).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(evaluation[0]["image"], expected, atol=1e-6, rtol=0)


def test_corrupt_files_are_skipped_and_counted_across_workers(tmp_path, caplog):
    root = make_tree(tmp_path / "tree")
    corrupt(root / "class_0" / "img_1.jpg")
    (root / "class_1" / "img_2.jpg").write_bytes(b"this is not a jpeg")
    data = ImageFolderDataset(root, eval_transform(SIZE))
    with caplog.at_level(logging.WARNING):
        batches = list(DataLoader(data, batch_size=3, num_workers=2))
    assert sum(len(b["label"]) for b in batches) == 8  # slots of bad files are refilled
    assert data.skipped == 2  # counted once each, from the worker processes
    data[1]  # a known-bad file is skipped again without re-counting
    assert data.skipped == 2
    direct = ImageFolderDataset(root, eval_transform(SIZE))
    with caplog.at_level(logging.WARNING):
        [direct[i] for i in range(len(direct))]
    assert "img_1.jpg" in caplog.text and direct.skipped == 2


def test_no_readable_image_names_the_path(tmp_path):
    root = tmp_path / "broken"
    root.mkdir()
    (root / "a.jpg").write_bytes(b"garbage")
    (root / "b.png").write_bytes(b"")
    with pytest.raises(RuntimeError, match=re.escape(str(root))):
        ImageFolderDataset(root, eval_transform(SIZE))


def test_missing_or_empty_folders_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nope"))):
        scan_image_folder(tmp_path / "nope")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "empty"))):
        scan_image_folder(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match=re.escape("data.val_path not found")):
        UniFlowDataModule("folder", str(tmp_path / "empty"), str(tmp_path / "nope"))


def test_datamodule_folder_training_and_exactly_once_validation(tmp_path):
    train = make_tree(tmp_path / "train")
    val = make_tree(tmp_path / "val", classes=3, per_class=3, seed=1)  # 9 images: uneven shards
    dm = UniFlowDataModule("folder", str(train), str(val), image_size=SIZE, batch_size=4, num_workers=0)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, SIZE, SIZE) and batch["label"].dtype == torch.int64
    assert len(dm.make_train_loader(0, 2)) == 1  # 8 images, 2 ranks, batch 4, last partial dropped

    def fingerprints(world: int) -> list[float]:
        out = []
        for rank in range(world):
            for b in dm.make_val_loader(rank, world):
                out += b["image"].sum((1, 2, 3)).tolist()
        return out

    reference = fingerprints(1)
    assert len(reference) == 9 and len(set(np.round(reference, 3))) == 9
    for world in (2, 3):
        got = fingerprints(world)
        assert len(got) == 9 and sorted(got) == pytest.approx(sorted(reference))


def stripes(path: Path, height: int = 32, width: int = 64) -> Path:
    """Red encodes the row (0 at the top, 1 at the bottom): a crop's red range is its vertical extent."""
    rows = np.linspace(0, 255, height, dtype=np.float64).round().astype(np.uint8)
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[..., 0] = rows[:, None]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def vertical_extent(image: torch.Tensor) -> float:
    """Red at the bottom row minus red at the top row of a C x H x W image."""
    return float(image[0, -1].mean() - image[0, 0].mean())


def test_resize_random_crop_keeps_the_whole_short_side_and_random_resized_crop_zooms(tmp_path):
    with Image.open(stripes(tmp_path / "s.png")) as img:
        img = img.convert("RGB")
        whole = train_transform(16, (0.1, 0.2), "resize_random_crop")
        zoom = train_transform(16, (0.1, 0.2), "random_resized_crop")
        for _ in range(10):
            view = whole(img)
            assert view.shape == (3, 16, 16)
            assert vertical_extent(view) > 0.9  # top row to bottom row: no zoom, no aspect change
            assert vertical_extent(zoom(img)) < 0.8  # at most a fifth of the area: never the full height
    with pytest.raises(ValueError, match="resize_random_crop"):
        train_transform(16, (0.1, 0.2), "centre")


def test_the_datamodule_uses_the_configured_training_crop(tmp_path):
    for i in range(2):
        stripes(tmp_path / "tree" / f"{i}.png")
    data = UniFlowDataModule("folder", str(tmp_path / "tree"), str(tmp_path / "tree"), image_size=16,
                             batch_size=2, num_workers=0, crop_scale=(0.1, 0.2), train_crop="resize_random_crop")  # fmt: skip
    batch = next(iter(data.make_train_loader()))["image"]
    assert all(vertical_extent(image) > 0.9 for image in batch)
    assert data.train_set.draft_side == 16  # the crop spans the short side: decode no larger than needed
