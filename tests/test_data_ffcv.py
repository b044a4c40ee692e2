"""The FFCV backend: writer (with a corrupt file), agreement with the folder backend, rank sharding, CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_data_folder import corrupt, make_tree

from uniflow.data.cli import main as data_cli
from uniflow.data.ffcv import FFCVLoader, eval_indices, write_ffcv
from uniflow.data.folder import ImageFolderDataset, draft_side_for, eval_transform

pytestmark = pytest.mark.usefixtures("requires_ffcv")  # skips, or fails under UNIFLOW_REQUIRE_ALL=1

SIZE = 32


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[Path, Path]:
    """A 3-class tree of 9 images, one of them truncated, and its FFCV file."""
    tmp = tmp_path_factory.mktemp("ffcv")
    root = make_tree(tmp / "tree", classes=3, per_class=3)
    corrupt(root / "class_1" / "img_0.jpg")
    report = write_ffcv(root, tmp / "data.beton", max_side=112, jpeg_quality=95, num_workers=1)
    assert report.written == 8 and report.skipped == [root / "class_1" / "img_0.jpg"]
    assert report.classes == ["class_0", "class_1", "class_2"]
    return root, report.path


def eval_loader(path: Path, rank: int = 0, world_size: int = 1, batch_size: int = 3) -> FFCVLoader:
    return FFCVLoader(
        path,
        image_size=SIZE,
        batch_size=batch_size,
        train=False,
        num_workers=1,
        rank=rank,
        world_size=world_size,
    )


@pytest.fixture(scope="module")
def single_rank(written) -> tuple[torch.Tensor, torch.Tensor]:
    _, path = written
    batches = list(eval_loader(path))
    return torch.cat([b["image"] for b in batches]), torch.cat([b["label"] for b in batches])


def test_ffcv_and_folder_backends_yield_the_same_images(written, single_rank):
    root, _ = written
    ffcv_images, ffcv_labels = single_rank
    assert ffcv_images.dtype == torch.float32 and ffcv_images.shape == (8, 3, SIZE, SIZE)
    folder = ImageFolderDataset(root, eval_transform(SIZE), draft_side=draft_side_for(SIZE, None))
    readable = [i for i, (p, _) in enumerate(folder.samples) if p != root / "class_1" / "img_0.jpg"]
    folder_images = torch.stack([folder[i]["image"] for i in readable])
    assert ffcv_labels.tolist() == [folder.samples[i][1] for i in readable]
    # Same crop and size; what differs is JPEG re-encoding, the writer's resize and the resampling filter.
    error = (ffcv_images - folder_images).abs().mean((1, 2, 3))
    assert error.max() < 0.04, error


def test_evaluation_visits_every_sample_once_on_1_2_3_ranks(written, single_rank):
    _, path = written
    reference = sorted(single_rank[0].sum((1, 2, 3)).tolist())
    assert len(reference) == 8
    for world_size in (1, 2, 3):
        shards = [eval_indices(8, rank, world_size).tolist() for rank in range(world_size)]
        assert sorted(i for shard in shards for i in shard) == list(range(8))
    # Loading for real on the uneven case (3 ranks: 3 + 3 + 2 samples).
    got = [
        s
        for rank in range(3)
        for b in eval_loader(path, rank, 3, batch_size=2)
        for s in b["image"].sum((1, 2, 3))
    ]
    assert len(got) == 8 and sorted(got) == pytest.approx(reference)


def test_an_evaluation_subset_decodes_just_its_samples_on_every_rank(written, single_rank):
    from uniflow.evaluation.benchmarks.readers import ffcv_batches, spread
    from uniflow.metrics import to_uint8

    _, path = written
    full = to_uint8(single_rank[0])
    for world_size in (1, 2, 3):
        seen = []
        for rank in range(world_size):
            batches, count, total, _ = ffcv_batches(
                path, rank, world_size, size=SIZE, batch_size=2, num=3, num_workers=1
            )
            assert (count, total) == (3, 8)
            for images, index, valid in batches:
                assert valid.all() and torch.equal(images, full[index])
                seen += index.tolist()
        assert sorted(seen) == spread(8, 3)  # 3 ranks: one of them holds none of the subset


def test_training_order_is_random_with_full_batches(written):
    _, path = written
    loader = FFCVLoader(path, image_size=SIZE, batch_size=3, train=True, num_workers=1, seed=0)
    epochs = [[b["label"].tolist() for b in loader] for _ in range(2)]
    assert len(epochs[0]) == 2 and all(len(b) == 3 for e in epochs for b in e)  # 8 // 3, last dropped
    assert epochs[0] != epochs[1]


def test_cli_writes_and_reports_errors_with_the_path(tmp_path, capsys):
    root = make_tree(tmp_path / "flat_src", classes=1, per_class=3)
    out = tmp_path / "out" / "flat.beton"
    args = [
        "write-ffcv",
        str(root),
        str(out),
        "--max-side",
        "64",
        "--jpeg-quality",
        "90",
        "--num-workers",
        "1",
    ]
    assert data_cli(args) == 0 and out.is_file()
    assert "wrote 3 images" in capsys.readouterr().out
    assert (
        data_cli(
            ["write-ffcv", str(tmp_path / "missing"), str(out), "--max-side", "64", "--jpeg-quality", "90"]
        )
        == 2  # a missing input is a usage error, found before any work
    )
    assert str(tmp_path / "missing") in capsys.readouterr().err


@pytest.mark.parametrize("crop", ["resize_random_crop", "random_resized_crop"])
def test_ffcv_training_crops(tmp_path, crop):
    from test_data_folder import stripes, vertical_extent

    for i in range(4):
        stripes(tmp_path / "tree" / f"{i}.png")
    path = write_ffcv(
        tmp_path / "tree", tmp_path / "s.beton", max_side=64, jpeg_quality=95, num_workers=1
    ).path
    loader = FFCVLoader(path, image_size=16, batch_size=4, train=True, num_workers=1, crop_scale=(0.1, 0.2),
                        train_crop=crop)  # fmt: skip
    images = next(iter(loader))["image"]
    assert images.shape == (4, 3, 16, 16)
    extents = [vertical_extent(image) for image in images]
    if crop == "resize_random_crop":
        assert min(extents) > 0.9  # the whole short side
    else:
        assert max(extents) < 0.8  # a fifth of the area at most
