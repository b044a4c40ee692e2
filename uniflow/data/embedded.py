"""The embedded dataset: procedural scenes and plain photo crops, generated on the fly, no download.

A *scene* is one large dominant shape (the class) in front of or behind a few small distractor shapes,
on a background cut from a real photo (:mod:`uniflow.data.photos`). Every scene carries

- ``label``: the dominant shape's type, one of the first ``NUM_CLASSES`` of ``SHAPES``,
- an instance mask (0 = background, 1 = the dominant shape, 2.. = distractors) and a semantic mask
  (0 = background, 1 + shape type),
- a depth map (background: a receding ground plane; shapes: fronto-parallel at their own depth;
  shapes are painted far to near, so occlusion agrees with depth),
- tight boxes (xyxy, end-exclusive, computed from the visible mask) with their shape types,
- question/answer pairs about the scene,
- on request, attributes (:func:`scene_attributes`: the dominant shape's colour, the number of
  shapes, the shape types present) that an encoder can be pretrained on besides the class.

Why this task: the label is a real visual concept (shape), but the dominant object covers most of the
image and has an outline, so a tiny ViT learns it in a few CPU minutes; a task where the class object
is small among similar distractors does not (see the issue's prototype).

Determinism: sample ``i`` of (seed, split) is drawn from its own generator seeded with
``(seed, split, kind, i)``, so it is the same image in every process, worker and epoch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter
from torch.utils.data import Dataset

from uniflow.data.photos import SPLITS, random_crop

NO_LABEL = -1  # label of samples without a class (photo crops, flat folders)

# The first NUM_CLASSES shapes are the classes (the dominant shape's type); distractors use them all.
SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond")
NUM_CLASSES = 4
COLOURS = {
    "red": (220, 35, 35),
    "green": (35, 170, 60),
    "blue": (40, 80, 225),
    "yellow": (240, 210, 40),
    "magenta": (205, 45, 200),
    "cyan": (40, 200, 215),
    "orange": (245, 135, 25),
    "white": (245, 245, 245),
}
COLOUR_NAMES = tuple(COLOURS)

_SPLIT_CODE = {"train": 0, "val": 1}
_SCENE, _PHOTO = 0, 1

# Radii as fractions of the image side: the dominant shape's diameter is 56-84% of the image, a
# distractor's at most 22%, so "largest" is unambiguous even after partial occlusion.
DOMINANT_RADIUS = (0.30, 0.40)
DISTRACTOR_RADIUS = (0.06, 0.11)
MAX_DISTRACTORS = 3
# The dominant shape stays near the centre with little rotation: a nearly aligned silhouette is what
# lets a tiny ViT learn the class in a few thousand images (wide jitter left it at chance for longer).
DOMINANT_SHIFT = 0.06
DOMINANT_ROTATION = 0.15  # radians; also keeps square and diamond apart
# The background is far (depth 5-10) and the shapes near, so it is rendered out of focus: a Gaussian
# blur of this radius (fraction of the image side). Besides matching the depth map, it removes the
# photo's sharp edges that otherwise compete with the shapes' outlines for a small ViT's attention.
BACKGROUND_BLUR = 1 / 32
# A dark outline of this width (fraction of the side; 4 px at 64 px) gives every shape a contour that
# does not depend on its colour; 1 px outlines learned markedly slower.
OUTLINE_WIDTH = 1 / 16
# Scene attributes besides the class that an encoder can be pretrained to predict
# (``pretrain.attributes``), with their number of classes: the dominant shape's colour, the number of
# visible shapes minus one, and which shape types are in the scene (multi-label).
ATTRIBUTES = {"colour": len(COLOURS), "count": 1 + MAX_DISTRACTORS, "shapes": len(SHAPES)}
MULTI_LABEL = frozenset({"shapes"})


def _outline(shape: str) -> np.ndarray:
    """Vertices on the unit circle scale (k x 2), centred at the origin, y pointing down."""
    if shape == "circle":
        a = np.linspace(0, 2 * math.pi, 48, endpoint=False)
        return np.stack([np.cos(a), np.sin(a)], 1)
    if shape == "square":
        return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=float) * 0.8
    if shape == "diamond":
        return np.array([[0, -1], [1, 0], [0, 1], [-1, 0]], dtype=float)
    if shape == "triangle":
        a = -math.pi / 2 + np.arange(3) * 2 * math.pi / 3
        return np.stack([np.cos(a), np.sin(a) + 0.2], 1)
    if shape == "star":
        a = -math.pi / 2 + np.arange(10) * math.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        return np.stack([r * np.cos(a), r * np.sin(a)], 1)
    if shape == "cross":
        t = 0.33
        return np.array(
            [
                [-t, -1],
                [t, -1],
                [t, -t],
                [1, -t],
                [1, t],
                [t, t],
                [t, 1],
                [-t, 1],
                [-t, t],
                [-1, t],
                [-1, -t],
                [-t, -t],
            ]
        )
    raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")


_OUTLINES = {s: _outline(s) for s in SHAPES}


@dataclass
class SceneObject:
    shape: int  # index into SHAPES
    colour: str
    depth: float
    box: tuple[int, int, int, int] = (0, 0, 0, 0)  # xyxy of the visible pixels, end-exclusive
    area: int = 0  # visible pixels


@dataclass
class Scene:
    """One rendered scene with all its annotations; ``objects[0]`` is the dominant shape."""

    image: np.ndarray  # uint8 H x W x 3
    label: int
    instance_mask: np.ndarray  # uint8 H x W, 0 = background, k = objects[k - 1]
    semantic_mask: np.ndarray  # uint8 H x W, 0 = background, 1 + shape index
    depth: np.ndarray  # float32 H x W, larger is farther
    objects: list[SceneObject]
    qa: list[tuple[str, str]] = field(default_factory=list)

    @property
    def boxes(self) -> np.ndarray:
        """Float32 n x 4 xyxy (end-exclusive pixel coordinates) of every visible object."""
        return np.array([o.box for o in self.objects], dtype=np.float32).reshape(-1, 4)

    @property
    def box_labels(self) -> np.ndarray:
        return np.array([o.shape for o in self.objects], dtype=np.int64)


def _rng(seed: int, split: str, kind: int, index: int) -> np.random.Generator:
    return np.random.default_rng((seed, _SPLIT_CODE[split], kind, index))


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def _questions(rng: np.random.Generator, objects: list[SceneObject]) -> list[tuple[str, str]]:
    dominant = objects[0]
    qa = [
        ("What shape is the largest object?", SHAPES[dominant.shape]),
        ("What colour is the largest shape?", dominant.colour),
        ("How many shapes are there?", str(len(objects))),
    ]
    present = {(o.colour, o.shape) for o in objects}
    if rng.random() < 0.5:
        colour, shape = sorted(present)[int(rng.integers(len(present)))]
    else:
        colour, shape = COLOUR_NAMES[int(rng.integers(len(COLOUR_NAMES)))], int(rng.integers(len(SHAPES)))
    answer = "yes" if (colour, shape) in present else "no"
    qa.append((f"Is there a {colour} {SHAPES[shape]}?", answer))
    if len(objects) > 1:
        other = objects[1 + int(rng.integers(len(objects) - 1))]
        nearer = dominant if dominant.depth < other.depth else other
        qa.append(
            (
                f"Which is closer, the {dominant.colour} {SHAPES[dominant.shape]} "
                f"or the {other.colour} {SHAPES[other.shape]}?",
                f"the {nearer.colour} {SHAPES[nearer.shape]}",
            )
        )
    return qa


def render_scene(seed: int, split: str, index: int, size: int) -> Scene:
    """Render scene ``index`` of ``split``; a pure function of its arguments."""
    _check_split(split)
    rng = _rng(seed, split, _SCENE, index)
    background = random_crop(rng, split, size)
    if BACKGROUND_BLUR > 0:
        background = background.filter(ImageFilter.GaussianBlur(BACKGROUND_BLUR * size))

    n_distractors = int(rng.integers(MAX_DISTRACTORS + 1))
    specs = []  # (shape, colour, depth, cx, cy, radius, angle)
    for k in range(1 + n_distractors):
        dominant = k == 0
        shape = int(rng.integers(NUM_CLASSES if dominant else len(SHAPES)))
        colour = COLOUR_NAMES[int(rng.integers(len(COLOUR_NAMES)))]
        radius = rng.uniform(*(DOMINANT_RADIUS if dominant else DISTRACTOR_RADIUS)) * size
        spread = DOMINANT_SHIFT if dominant else 0.42
        cx, cy = (0.5 + rng.uniform(-spread, spread, 2)) * size
        angle = rng.uniform(-DOMINANT_ROTATION, DOMINANT_ROTATION)
        depth = rng.uniform(1.5, 3.0) if dominant else rng.uniform(1.0, 4.0)
        specs.append((shape, colour, depth, cx, cy, radius, angle))

    # Ground plane: depth grows towards the top of the image, always behind every shape.
    rows = np.linspace(1.0, 0.0, size, dtype=np.float32)[:, None]
    depth = np.broadcast_to(5.0 + 5.0 * rows, (size, size)).copy()
    image = np.asarray(background, dtype=np.float32).copy()
    instance = np.zeros((size, size), np.uint8)
    outline_width = max(1, round(size * OUTLINE_WIDTH))

    for k in sorted(range(len(specs)), key=lambda i: -specs[i][2]):  # far to near
        shape, colour, obj_depth, cx, cy, radius, angle = specs[k]
        pts = _OUTLINES[SHAPES[shape]]
        rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        xy = pts @ rot.T * radius + (cx, cy)
        canvas = Image.new("L", (size, size), 0)
        ImageDraw.Draw(canvas).polygon([tuple(p) for p in xy], fill=1, outline=2, width=outline_width)
        drawn = np.asarray(canvas)
        inside = drawn > 0
        # A left-to-right light gradient gives the flat shapes some shading to reconstruct.
        shade = 0.8 + 0.4 * (np.arange(size, dtype=np.float32) - (cx - radius)) / (2 * radius)
        shade = np.clip(shade, 0.8, 1.2)[None, :, None]
        fill = np.clip(np.asarray(COLOURS[colour], np.float32) * shade, 0, 255)
        fill = np.broadcast_to(fill, image.shape)
        image[inside] = np.where((drawn[inside] == 2)[:, None], 20.0, fill[inside])
        instance[inside] = k + 1
        depth[inside] = obj_depth

    objects: list[SceneObject] = []
    remap = np.zeros(len(specs) + 1, np.uint8)
    for k, (shape, colour, obj_depth, *_rest) in enumerate(specs):
        ys, xs = np.nonzero(instance == k + 1)
        if len(ys) == 0:  # a distractor entirely hidden by nearer shapes is not in the scene
            continue
        obj = SceneObject(shape, colour, float(obj_depth))
        obj.box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        obj.area = len(ys)
        objects.append(obj)
        remap[k + 1] = len(objects)
    instance = remap[instance]

    semantic = np.zeros(len(objects) + 1, np.uint8)
    semantic[1:] = [o.shape + 1 for o in objects]
    return Scene(
        image=np.clip(image + 0.5, 0, 255).astype(np.uint8),
        label=objects[0].shape,
        instance_mask=instance,
        semantic_mask=semantic[instance],
        depth=depth,
        objects=objects,
        qa=_questions(rng, objects),
    )


def scene_attributes(scene: Scene) -> dict[str, torch.Tensor]:
    """The targets of :data:`ATTRIBUTES` for one scene (class indices; a 0/1 float vector for multi-label)."""
    shapes = torch.zeros(len(SHAPES))
    shapes[[o.shape for o in scene.objects]] = 1.0
    return {
        "colour": torch.tensor(COLOUR_NAMES.index(scene.objects[0].colour)),
        "count": torch.tensor(len(scene.objects) - 1),
        "shapes": shapes,
    }


def render_photo_crop(seed: int, split: str, index: int, size: int) -> np.ndarray:
    """Photo crop ``index`` of ``split`` as uint8 H x W x 3; a pure function of its arguments."""
    _check_split(split)
    return np.array(random_crop(_rng(seed, split, _PHOTO, index), split, size))


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1).float().div_(255.0)


class EmbeddedScenes(Dataset):
    """``num`` scenes of ``split``: ``{"image", "label"}``; with ``annotations`` also the dense maps,
    with ``attributes`` also ``"attributes"`` (:func:`scene_attributes`).

    Boxes and questions vary in number per scene, so they are not in the collated sample; read them
    from :meth:`scene`.
    """

    def __init__(
        self,
        split: str,
        num: int,
        size: int = 64,
        seed: int = 0,
        annotations: bool = False,
        attributes: bool = False,
    ):
        _check_split(split)
        self.split, self.num, self.size, self.seed, self.annotations = split, num, size, seed, annotations
        self.attributes = attributes

    def __len__(self) -> int:
        return self.num

    def scene(self, index: int) -> Scene:
        if not 0 <= index < self.num:
            raise IndexError(f"scene index {index} out of range for {self.num} scenes")
        return render_scene(self.seed, self.split, index, self.size)

    def raw(self, index: int) -> tuple[np.ndarray, int]:
        """uint8 H x W x 3 image and label."""
        s = self.scene(index)
        return s.image, s.label

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        s = self.scene(index)
        item: dict[str, torch.Tensor | int] = {"image": _to_tensor(s.image), "label": s.label}
        if self.annotations:
            item["mask"] = torch.from_numpy(s.instance_mask.astype(np.int64))
            item["semantic"] = torch.from_numpy(s.semantic_mask.astype(np.int64))
            item["depth"] = torch.from_numpy(s.depth)[None]
        if self.attributes:
            item["attributes"] = scene_attributes(s)
        return item


class PhotoCrops(Dataset):
    """``num`` plain crops of the real photos of ``split``: ``{"image", "label": NO_LABEL}``."""

    def __init__(self, split: str, num: int, size: int = 64, seed: int = 0):
        _check_split(split)
        self.split, self.num, self.size, self.seed = split, num, size, seed

    def __len__(self) -> int:
        return self.num

    def raw(self, index: int) -> tuple[np.ndarray, int]:
        if not 0 <= index < self.num:
            raise IndexError(f"photo crop index {index} out of range for {self.num} crops")
        return render_photo_crop(self.seed, self.split, index, self.size), NO_LABEL

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        image, label = self.raw(index)
        return {"image": _to_tensor(image), "label": label}


class EmbeddedMixture(Dataset):
    """Scenes then photo crops, in the proportion ``photo_fraction`` (the tokenizer sees both).

    Index ``i < num_scenes`` is scene ``i``; the rest are photo crops ``i - num_scenes``. With
    ``attributes`` (scenes only: a photo crop has none) samples also carry the scene attributes.
    """

    def __init__(
        self,
        split: str,
        num: int,
        size: int = 64,
        seed: int = 0,
        photo_fraction: float = 0.0,
        attributes: bool = False,
    ):
        if not 0.0 <= photo_fraction <= 1.0:
            raise ValueError(f"photo_fraction must be in [0, 1], got {photo_fraction}")
        if attributes and photo_fraction > 0:
            raise ValueError(
                f"scene attributes need photo_fraction=0 (photo crops have none), got {photo_fraction}"
            )
        n_photo = round(num * photo_fraction)
        self.scenes = EmbeddedScenes(split, num - n_photo, size, seed, attributes=attributes)
        self.photos = PhotoCrops(split, n_photo, size, seed)
        self.attributes = attributes

    def __len__(self) -> int:
        return len(self.scenes) + len(self.photos)

    def raw(self, index: int) -> tuple[np.ndarray, int]:
        if index < len(self.scenes):
            return self.scenes.raw(index)
        return self.photos.raw(index - len(self.scenes))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        if self.attributes:
            return self.scenes[index]
        image, label = self.raw(index)
        return {"image": _to_tensor(image), "label": label}


class CachedDataset(Dataset):
    """An embedded dataset rendered once into uint8 memory, so epochs cost no generation time.

    ``num * 3 * size * size`` bytes: 4096 images of 64 px take 50 MB (the attributes, if the
    dataset has them, a few bytes more per image).
    """

    def __init__(self, dataset: EmbeddedScenes | PhotoCrops | EmbeddedMixture):
        n = len(dataset)
        images = np.empty((n, dataset_size(dataset), dataset_size(dataset), 3), np.uint8)
        labels = np.empty(n, np.int64)
        attributes: list[dict[str, torch.Tensor]] = []
        scenes = dataset.scenes if isinstance(dataset, EmbeddedMixture) else dataset
        with_attributes = getattr(scenes, "attributes", False)
        for i in range(n):
            if with_attributes:  # one rendering for the image, the label and the attributes
                scene = scenes.scene(i)
                images[i], labels[i] = scene.image, scene.label
                attributes.append(scene_attributes(scene))
            else:
                images[i], labels[i] = dataset.raw(i)
        self.images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
        self.labels = torch.from_numpy(labels)
        self.attributes = (
            {key: torch.stack([a[key] for a in attributes]) for key in ATTRIBUTES} if attributes else None
        )

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        item = {"image": self.images[index].float().div_(255.0), "label": int(self.labels[index])}
        if self.attributes is not None:
            item["attributes"] = {key: value[index] for key, value in self.attributes.items()}
        return item


def dataset_size(dataset: EmbeddedScenes | PhotoCrops | EmbeddedMixture) -> int:
    return dataset.scenes.size if isinstance(dataset, EmbeddedMixture) else dataset.size
