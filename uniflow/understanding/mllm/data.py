"""LLaVA training data for the MLLM stage: a training json plus an image folder -> encoded, collated batches.

Images get LLaVA-1.5's ``image_aspect_ratio: pad`` treatment (``expand2square``): the shorter side is
padded to a square with the encoder's normalisation mean as the colour (LLaVA uses its image
processor's mean), then the square is resized to the vision tokens' input size (bicubic). Text goes
through :func:`encode_conversation` (labels piece by piece, with its two checks) when a sample is read,
so a broken sample fails with its id. With ``pack_by_image`` an item is every sample that shows one
image, packed into one sequence (:mod:`uniflow.understanding.mllm.packing`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from uniflow.data.vqa_formats import LlavaConversation, read_llava_training_json
from uniflow.training.data import StepStream
from uniflow.understanding.mllm.conversation import (
    IMAGE_PLACEHOLDER,
    Template,
    encode_conversation,
    parse_llava_conversations,
)
from uniflow.understanding.mllm.model import collate_mllm
from uniflow.understanding.mllm.packing import pack_samples


def square_image(image: Image.Image, size: int, background: Sequence[float]) -> torch.Tensor:
    """``3 x size x size`` float in [0, 1]: ``image`` padded to a centred square of ``background``
    (RGB in [0, 1]), as LLaVA's ``expand2square``, then resized (bicubic)."""
    image = image.convert("RGB")
    width, height = image.size
    if width != height:
        side = max(width, height)
        fill = tuple(round(255 * c) for c in background)
        square = Image.new("RGB", (side, side), fill)  # type: ignore[arg-type]
        square.paste(image, ((side - width) // 2, (side - height) // 2))
        image = square
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def load_square_image(path: str | Path, size: int, background: Sequence[float]) -> torch.Tensor:
    """:func:`square_image` of the image file at ``path``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    with Image.open(path) as opened:
        return square_image(opened, size, background)


class LlavaTrainingSet(Dataset):
    """Samples of a LLaVA training json, encoded with ``template``; images from ``image_folder``.

    ``pack_by_image``: an item is all samples with the same ``image`` (in the json's order), packed
    into one sequence that computes their common prefix once; samples without an image stay alone.
    """

    def __init__(
        self,
        samples: Sequence[LlavaConversation],
        image_folder: str | Path | None,
        tokenizer: Any,
        template: Template,
        image_size: int,
        background: Sequence[float],
        pack_by_image: bool = False,
    ) -> None:
        if not samples:
            raise ValueError("the LLaVA training json holds no samples")
        if image_folder is None and any(s.image for s in samples):
            raise ValueError(
                "the training json names images but no image folder is given (mllm.image_folder)"
            )
        self.samples = list(samples)
        self.image_folder = Path(image_folder) if image_folder is not None else None
        self.tokenizer, self.template = tokenizer, template
        self.image_size, self.background = image_size, tuple(background)
        groups: dict[str | int, list[int]] = {}
        for index, sample in enumerate(self.samples):
            key = sample.image if pack_by_image and sample.image else index
            groups.setdefault(key, []).append(index)
        self.items = list(groups.values())

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        group = self.items[index]
        if len(group) == 1:
            return self._sample(group[0], with_image=True)
        return pack_samples([self._sample(i, with_image=k == 0) for k, i in enumerate(group)])

    def _sample(self, index: int, with_image: bool) -> dict[str, Any]:
        sample = self.samples[index]
        turns = [{"from": t.role, "value": t.value} for t in sample.conversations]
        messages = parse_llava_conversations(turns, sample.id)
        has_placeholder = any(IMAGE_PLACEHOLDER in m["content"] for m in messages)
        if sample.image and not has_placeholder:
            # LLaVA-Pretrain and mix665k always hold one; a sample without it would drop its image.
            raise ValueError(f"sample {sample.id!r} has an image but no {IMAGE_PLACEHOLDER} in its text")
        encoded = encode_conversation(messages, self.tokenizer, self.template, sample.id)
        item: dict[str, Any] = {"id": sample.id, "input_ids": encoded.input_ids, "labels": encoded.labels}
        if sample.image and with_image:
            assert self.image_folder is not None  # checked in __init__
            item["image"] = load_square_image(
                self.image_folder / sample.image, self.image_size, self.background
            )
        return item


class MLLMDataModule(L.LightningDataModule):
    """The training set as one endless, resumable stream of shuffled batches (``StepStream``), one
    shard per process; there is no validation split (the stage scores held-out questions at the end)."""

    def __init__(
        self,
        train_json: str | Path,
        image_folder: str | Path | None,
        tokenizer: Any,
        template: Template,
        image_size: int,
        background: Sequence[float],
        batch_size: int,
        num_workers: int,
        seed: int,
        pack_by_image: bool = False,
    ) -> None:
        super().__init__()
        self.train_json, self.image_folder = train_json, image_folder
        self.tokenizer, self.template = tokenizer, template
        self.image_size, self.background = image_size, background
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.pack_by_image = pack_by_image
        self.train_set: LlavaTrainingSet | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set = LlavaTrainingSet(
                read_llava_training_json(self.train_json),
                self.image_folder,
                self.tokenizer,
                self.template,
                self.image_size,
                self.background,
                self.pack_by_image,
            )

    def _collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        pad = (
            self.tokenizer.pad_token_id
            if self.tokenizer.pad_token_id is not None
            else self.tokenizer.eos_token_id
        )
        return collate_mllm(samples, pad)

    def train_dataloader(self) -> StepStream:
        assert self.train_set is not None  # Lightning calls setup first
        trainer = self.trainer
        # A DistributedSampler even for one process: its order is a function of (seed, epoch), so a
        # resumed run (StepStream sets the epoch and skips what was consumed) sees the same batches.
        sampler = DistributedSampler(
            self.train_set,
            num_replicas=trainer.world_size if trainer is not None else 1,
            rank=trainer.global_rank if trainer is not None else 0,
            shuffle=True,
            seed=self.seed,
            drop_last=True,
        )
        loader = DataLoader(
            self.train_set,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=self._collate,
            drop_last=True,
            persistent_workers=self.num_workers > 0,
        )
        start = trainer.global_step if trainer is not None else 0
        return StepStream(loader, start)
