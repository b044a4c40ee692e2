"""Probe readers on tiny files written in the real on-disk formats, and their errors on bad files."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from uniflow.data.folder import eval_transform
from uniflow.data.probe_readers import (
    ADE20KSegmentation,
    COCODetection,
    NYUDepthV2,
    detection_collate,
    imagenet_folder,
)
from uniflow.metrics.detection import coco_box_map


def _jpg(path, height, width, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=95)


# ------------------------------------------------------------------ ADE20K


@pytest.fixture
def ade_root(tmp_path):
    ade = tmp_path / "ADEChallengeData2016"
    _jpg(ade / "images" / "validation" / "ADE_val_00000001.jpg", 6, 8)
    labels = np.zeros((6, 8), np.uint8)
    labels[:, 2:4], labels[:, 4:] = 1, 150
    (ade / "annotations" / "validation").mkdir(parents=True)
    Image.fromarray(labels).save(ade / "annotations" / "validation" / "ADE_val_00000001.png")
    return tmp_path


def test_ade20k_reads_images_and_shifted_label_maps(ade_root):
    dataset = ADE20KSegmentation(ade_root, "val")  # the directory holding ADEChallengeData2016 works
    sample = dataset[0]
    assert len(dataset) == 1
    assert sample["image"].shape == (3, 6, 8) and sample["image"].dtype == torch.float32
    assert float(sample["image"].min()) >= 0.0 and float(sample["image"].max()) <= 1.0
    semantic = sample["semantic"]
    assert semantic.shape == (6, 8) and semantic.dtype == torch.int64
    assert semantic[0].tolist() == [255, 255, 0, 0, 149, 149, 149, 149]  # 0 ignored, k -> k - 1


def test_ade20k_transforms_move_image_and_labels_together(ade_root):
    dataset = ADE20KSegmentation(
        ade_root / "ADEChallengeData2016", "validation", transforms=v2.Resize((12, 16))
    )
    sample = dataset[0]
    assert sample["image"].shape == (3, 12, 16) and sample["semantic"].shape == (12, 16)
    assert set(sample["semantic"].unique().tolist()) == {0, 149, 255}  # nearest: no blended labels


def test_ade20k_errors_name_the_file(ade_root):
    annotation = ade_root / "ADEChallengeData2016" / "annotations" / "validation" / "ADE_val_00000001.png"
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(annotation)
    with pytest.raises(ValueError, match=r"ADE_val_00000001\.png.*single-channel"):
        ADE20KSegmentation(ade_root, "val")[0]
    Image.fromarray(np.zeros((5, 8), np.uint8)).save(annotation)
    with pytest.raises(ValueError, match="label map is"):
        ADE20KSegmentation(ade_root, "val")[0]
    Image.fromarray(np.full((6, 8), 200, np.uint8)).save(annotation)
    with pytest.raises(ValueError, match=r"expected labels 0\.\.150"):
        ADE20KSegmentation(ade_root, "val")[0]
    annotation.write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"ADE_val_00000001\.png is not a readable"):
        ADE20KSegmentation(ade_root, "val")[0]
    annotation.unlink()
    with pytest.raises(FileNotFoundError, match=r"ADE_val_00000001\.png"):
        ADE20KSegmentation(ade_root, "val")[0]
    with pytest.raises(FileNotFoundError, match=r"images/training"):
        ADE20KSegmentation(ade_root, "train")


# ------------------------------------------------------------------ NYU-Depth v2


@pytest.fixture
def nyu_root(tmp_path):
    scene = tmp_path / "official_splits" / "test" / "bathroom"
    _jpg(scene / "rgb_00045.jpg", 4, 6)
    millimetres = np.zeros((4, 6), np.uint16)
    millimetres[0] = [0, 1, 1000, 2500, 9999, 65535]
    Image.fromarray(millimetres).save(scene / "sync_depth_00045.png")
    files = tmp_path / "nyudepthv2_test_files_with_gt.txt"
    files.write_text("/bathroom/rgb_00045.jpg /bathroom/sync_depth_00045.png 518.8579\n\n")
    return tmp_path


def test_nyu_reads_16bit_millimetres_as_metres(nyu_root):
    dataset = NYUDepthV2(
        nyu_root / "official_splits" / "test", nyu_root / "nyudepthv2_test_files_with_gt.txt"
    )
    sample = dataset[0]
    assert len(dataset) == 1 and sample["image"].shape == (3, 4, 6)
    depth = sample["depth"]
    assert depth.shape == (1, 4, 6) and depth.dtype == torch.float32
    assert depth[0, 0].tolist() == pytest.approx([0.0, 0.001, 1.0, 2.5, 9.999, 65.535])
    resized = NYUDepthV2(
        nyu_root / "official_splits" / "test",
        nyu_root / "nyudepthv2_test_files_with_gt.txt",
        transforms=v2.Resize((8, 12)),
    )[0]
    assert resized["depth"].shape == (1, 8, 12)
    assert set(resized["depth"].unique().tolist()) <= set(depth.unique().tolist())  # nearest, no blending


def test_nyu_errors_name_the_file(nyu_root):
    root, files = nyu_root / "official_splits" / "test", nyu_root / "nyudepthv2_test_files_with_gt.txt"
    with pytest.raises(FileNotFoundError, match=r"missing\.txt"):
        NYUDepthV2(root, nyu_root / "missing.txt")
    files.write_text("/bathroom/rgb_00045.jpg\n")
    with pytest.raises(ValueError, match=r"nyudepthv2_test_files_with_gt\.txt:1"):
        NYUDepthV2(root, files)
    files.write_text("/bathroom/rgb_00045.jpg /bathroom/sync_depth_00045.png 518.8579\n")
    depth_png = root / "bathroom" / "sync_depth_00045.png"
    Image.fromarray(np.zeros((4, 6), np.uint8)).save(depth_png)  # an 8-bit visualisation, not depth
    with pytest.raises(ValueError, match=r"sync_depth_00045\.png: expected a 16-bit"):
        NYUDepthV2(root, files)[0]
    depth_png.unlink()
    with pytest.raises(FileNotFoundError, match=r"sync_depth_00045\.png"):
        NYUDepthV2(root, files)[0]


# ------------------------------------------------------------------ COCO 2017


@pytest.fixture
def coco_root(tmp_path):
    _jpg(tmp_path / "val2017" / "000000000139.jpg", 20, 30)
    _jpg(tmp_path / "val2017" / "000000000285.jpg", 10, 10, seed=1)
    instances = {
        "info": {},
        "licenses": [],
        "images": [
            {"id": 139, "file_name": "000000000139.jpg", "height": 20, "width": 30},
            {"id": 285, "file_name": "000000000285.jpg", "height": 10, "width": 10},
        ],
        "categories": [
            {"id": 18, "name": "dog", "supercategory": "animal"},
            {"id": 1, "name": "person", "supercategory": "person"},
        ],
        "annotations": [
            {
                "id": 5,
                "image_id": 139,
                "category_id": 18,
                "bbox": [2.0, 3.0, 10.0, 5.0],
                "area": 40.0,
                "iscrowd": 0,
            },
            {
                "id": 6,
                "image_id": 139,
                "category_id": 1,
                "bbox": [0.0, 0.0, 30.0, 20.0],
                "area": 500.0,
                "iscrowd": 1,
            },
        ],
    }
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val2017.json").write_text(json.dumps(instances))
    return tmp_path


def test_coco_reads_boxes_as_xyxy_with_contiguous_labels_and_crowd_flags(coco_root):
    dataset = COCODetection(coco_root, "val")
    assert len(dataset) == 2  # the image without annotations stays for evaluation
    assert [c["name"] for c in dataset.categories] == ["person", "dog"]  # label k = k-th category by id
    sample = dataset[0]
    assert sample["image_id"] == 139 and sample["image"].shape == (3, 20, 30)
    assert sample["boxes"].tolist() == [[2.0, 3.0, 12.0, 8.0], [0.0, 0.0, 30.0, 20.0]]
    assert sample["labels"].tolist() == [2, 1] and sample["iscrowd"].tolist() == [0, 1]
    assert sample["area"].tolist() == [40.0, 500.0] and sample["orig_size"] == (20, 30)
    empty = dataset[1]
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)
    assert len(COCODetection(coco_root, "val2017", skip_empty=True)) == 1


def test_coco_resize_scales_boxes_and_round_trips_through_the_evaluator(coco_root):
    dataset = COCODetection(coco_root, "val", transforms=v2.Resize((40, 60)))
    images, targets = detection_collate([dataset[0]])
    assert images.shape == (1, 3, 40, 60)
    assert targets[0]["boxes"].tolist()[0] == [4.0, 6.0, 24.0, 16.0]
    # The ground truth detected perfectly (the crowd region too, which must not count against it).
    predictions = [{**t, "scores": torch.ones(len(t["labels"]))} for t in targets]
    assert coco_box_map(predictions, targets)["map"] == pytest.approx(1.0)


def test_coco_errors_name_the_file(coco_root):
    annotations = coco_root / "annotations" / "instances_val2017.json"
    valid = json.loads(annotations.read_text())
    annotations.write_text("{not json")
    with pytest.raises(ValueError, match=r"instances_val2017\.json is not valid JSON"):
        COCODetection(coco_root, "val")
    annotations.write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match=r"instances_val2017\.json.*'annotations', 'categories'"):
        COCODetection(coco_root, "val")
    broken = {**valid, "annotations": [{**valid["annotations"][0], "bbox": [1, 2, 3]}]}
    annotations.write_text(json.dumps(broken))
    with pytest.raises(ValueError, match=r"expected bbox \[x, y, w, h\]"):
        COCODetection(coco_root, "val")
    annotations.write_text(json.dumps(valid))
    (coco_root / "val2017" / "000000000139.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"000000000139\.jpg"):
        COCODetection(coco_root, "val")[0]
    with pytest.raises(FileNotFoundError, match=r"instances_train2017\.json|train2017"):
        COCODetection(coco_root, "train")


# ------------------------------------------------------------------ ImageNet folders


def test_imagenet_folder_labels_by_sorted_class_directory(tmp_path):
    _jpg(tmp_path / "val" / "n01440764" / "ILSVRC2012_val_00000293.JPEG", 8, 8)
    _jpg(tmp_path / "val" / "n01443537" / "ILSVRC2012_val_00000236.JPEG", 8, 8)
    dataset = imagenet_folder(tmp_path, "val", eval_transform(8))
    assert dataset.classes == ["n01440764", "n01443537"]
    assert [dataset[i]["label"] for i in range(2)] == [0, 1]
    with pytest.raises(FileNotFoundError, match="train"):
        imagenet_folder(tmp_path, "train", eval_transform(8))
