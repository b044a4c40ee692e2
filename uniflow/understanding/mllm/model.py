"""The MLLM probe: frozen vision tokens -> connector -> a causal language model (LLaVA-1.5's recipe).

Vision features come from any callable ``images -> B x N x D`` (a tokenizer's ``semantic_tokens``, a raw
encoder's patch tokens), or arrive precomputed in the batch. The connector maps them to the LLM's
embedding width and they replace the ``<image>`` placeholder of the text: one placeholder token
becomes the image's ``M`` tokens, as in LLaVA's ``prepare_inputs_labels_for_multimodal``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from uniflow.understanding.mllm.connector import Connector
from uniflow.understanding.mllm.conversation import IGNORE_INDEX, IMAGE_TOKEN_INDEX, ConversationError
from uniflow.understanding.mllm.packing import PAD, PREFIX, turn_attention

# Which parts of the probe learn: LLaVA-1.5 stage 1 trains the connector only; stage 2 the connector
# and the LLM, in full or through LoRA adapters.
TRAINABLE = ("connector", "full", "lora")


@dataclass(frozen=True)
class LoraSettings:
    """LoRA on every linear layer of the LLM except the output head; defaults are LLaVA-1.5's
    ``finetune_lora.sh`` (rank 128, alpha 256, dropout 0.05)."""

    r: int = 128
    alpha: int = 256
    dropout: float = 0.05
    target_modules: str | tuple[str, ...] = "all-linear"


def load_causal_lm(
    path: str | Path,
    gguf_file: str | None = None,
    dtype: torch.dtype = torch.float32,
    tokenizer_kwargs: Mapping[str, Any] | None = None,
) -> tuple[nn.Module, Any]:
    """A Hugging Face causal LM and its tokenizer from a local directory (no hub access).

    With ``gguf_file`` (a file name inside ``path``) both come from that GGUF file; transformers
    dequantizes its weights to ``dtype``. The tokenizer gets a pad token (its EOS) if it has none,
    because batches are padded. ``tokenizer_kwargs`` go to ``AutoTokenizer.from_pretrained``: a
    SentencePiece tokenizer (Llama, Vicuna) needs ``add_prefix_space=False`` so that prompt pieces
    tokenized one by one concatenate to the prompt's text.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"language model directory not found: {path.resolve()}")
    if gguf_file is not None and not (path / gguf_file).is_file():
        raise FileNotFoundError(f"GGUF file not found: {(path / gguf_file).resolve()}")
    kwargs: dict[str, Any] = {"local_files_only": True}
    if gguf_file is not None:
        kwargs["gguf_file"] = gguf_file
    tokenizer = AutoTokenizer.from_pretrained(path, **kwargs, **(tokenizer_kwargs or {}))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kwargs)
    return model, tokenizer


def collate_mllm(samples: Sequence[Mapping[str, Any]], pad_token_id: int) -> dict[str, Any]:
    """Right-padded batch of encoded samples.

    A sample holds ``id``, ``input_ids`` (with ``IMAGE_TOKEN_INDEX`` where the image goes), optional
    ``labels``, optional ``turns`` (packed samples, :mod:`uniflow.understanding.mllm.packing`), and for a
    sample with a placeholder either ``image`` (``3 x H x W``) or precomputed ``image_features``
    (``N x D``). Images (or features) are stacked in sample order, the order in which
    :meth:`MLLMProbe.prepare_inputs` consumes the placeholders.
    """
    if not samples:
        raise ValueError("collate_mllm: expected at least one sample")
    length = max(len(s["input_ids"]) for s in samples)
    input_ids = torch.full((len(samples), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(samples), length), dtype=torch.long)
    with_labels = all("labels" in s for s in samples)
    labels = torch.full((len(samples), length), IGNORE_INDEX, dtype=torch.long)
    # An unpacked sample is all prefix (plain causal attention) when it shares a batch with packed ones.
    packed = any("turns" in s for s in samples)
    turns = torch.full((len(samples), length), PAD, dtype=torch.long)
    visuals: dict[str, list[torch.Tensor]] = {"image": [], "image_features": []}
    for i, sample in enumerate(samples):
        ids = sample["input_ids"]
        input_ids[i, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
        attention_mask[i, : len(ids)] = 1
        if with_labels:
            labels[i, : len(ids)] = torch.as_tensor(sample["labels"], dtype=torch.long)
        turns[i, : len(ids)] = torch.as_tensor(sample.get("turns", [PREFIX] * len(ids)), dtype=torch.long)
        given = [key for key in visuals if sample.get(key) is not None]
        placeholders = list(ids).count(IMAGE_TOKEN_INDEX)
        if placeholders != len(given):
            raise ValueError(
                f"sample {sample.get('id')!r}: {placeholders} image placeholder(s) but "
                f"{len(given)} of 'image'/'image_features' given (LLaVA-1.5 takes one image per sample)"
            )
        for key in given:
            visuals[key].append(sample[key])
    if visuals["image"] and visuals["image_features"]:
        raise ValueError("collate_mllm: a batch mixes raw images and precomputed image features")
    batch: dict[str, Any] = {
        "ids": [str(s.get("id", i)) for i, s in enumerate(samples)],
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "images": torch.stack(visuals["image"]) if visuals["image"] else None,
        "image_features": torch.stack(visuals["image_features"]) if visuals["image_features"] else None,
    }
    if with_labels:
        batch["labels"] = labels
    if packed:
        batch["turns"] = turns
    return batch


class MLLMProbe(nn.Module):
    """Frozen vision features -> :class:`Connector` -> causal LM; ``forward(batch)`` is the LM loss.

    ``vision`` maps images ``B x 3 x H x W`` to tokens ``B x N x vision_dim``; it always stays frozen
    (the probe measures the features, it does not tune them). A module is registered so it moves with
    the probe; a plain callable is the caller's to place. ``trainable`` is ``connector``, ``full`` or
    ``lora`` (peft adapters, ``lora`` settings). ``max_length`` cuts spliced sequences on the right, as
    LLaVA does at the tokenizer's ``model_max_length``.
    """

    def __init__(
        self,
        language_model: nn.Module,
        tokenizer: Any,
        vision_dim: int,
        vision: Callable[[torch.Tensor], torch.Tensor] | None = None,
        *,
        pixel_unshuffle: bool = False,
        grid: tuple[int, int] | None = None,
        trainable: str = "connector",
        lora: LoraSettings | None = None,
        max_length: int | None = None,
    ) -> None:
        super().__init__()
        if trainable not in TRAINABLE:
            raise ValueError(f"trainable must be one of {TRAINABLE}, got {trainable!r}")
        if lora is not None and trainable != "lora":
            raise ValueError(f"LoRA settings given but trainable={trainable!r}; use trainable='lora'")
        self.tokenizer = tokenizer
        self.pad_token_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        )
        if self.pad_token_id is None:
            raise ValueError("the tokenizer has neither a pad nor an EOS token to pad batches with")
        self.trainable = trainable
        self.max_length = max_length
        self.vision = vision
        if isinstance(vision, nn.Module):
            vision.requires_grad_(False).eval()
        self.connector = Connector(
            vision_dim, language_model.get_input_embeddings().embedding_dim, pixel_unshuffle, grid
        )
        language_model.requires_grad_(trainable == "full")
        if trainable == "lora":
            from peft import LoraConfig, get_peft_model

            settings = lora or LoraSettings()
            config = LoraConfig(
                r=settings.r,
                lora_alpha=settings.alpha,
                lora_dropout=settings.dropout,
                target_modules=settings.target_modules
                if isinstance(settings.target_modules, str)
                else list(settings.target_modules),
                task_type="CAUSAL_LM",
            )
            language_model = get_peft_model(language_model, config)
        self.language_model = language_model
        # transformers 5 renamed the key/value cache argument ``past_key_values`` to ``cache``.
        parameters = inspect.signature(self.causal_lm.forward).parameters
        self.cache_argument = "cache" if "cache" in parameters else "past_key_values"

    @property
    def causal_lm(self) -> nn.Module:
        """The transformers model itself (inside the peft wrapper, whose LoRA layers it holds)."""
        model = self.language_model
        return model.get_base_model() if hasattr(model, "get_base_model") else model

    def train(self, mode: bool = True) -> MLLMProbe:
        super().train(mode)
        if isinstance(self.vision, nn.Module):
            self.vision.eval()
        return self

    def image_embeddings(self, batch: Mapping[str, Any]) -> torch.Tensor | None:
        """The connector's output ``K x M x llm_dim`` for the batch's K images, or None without images."""
        features = batch.get("image_features")
        if features is None and batch.get("images") is not None:
            if self.vision is None:
                raise ValueError("the batch holds images but the probe has no vision feature extractor")
            with torch.no_grad():
                features = self.vision(batch["images"])
        if features is None:
            return None
        weight = self.connector.mlp[0].weight
        embeddings = self.connector(features.to(device=weight.device, dtype=weight.dtype))
        return embeddings.to(self.causal_lm.get_input_embeddings().weight.dtype)

    def prepare_inputs(self, batch: Mapping[str, Any], padding_side: str = "right") -> dict[str, Any]:
        """Splice the images into the text embeddings and pad on ``padding_side``.

        Returns ``inputs_embeds`` (B x L x H), ``attention_mask``, ``position_ids`` (counting real
        tokens only, so a left-padded prompt sees the positions it would see alone) and, when the batch
        has labels, ``labels`` with ``IGNORE_INDEX`` on image tokens and padding. A batch of packed
        samples (``turns``) gets a 4-D attention mask that keeps each turn to the prefix and itself,
        and each turn's positions as in its own sample (:func:`turn_attention`).
        """
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        input_ids, attention_mask = batch["input_ids"], batch["attention_mask"].bool()
        labels, turns = batch.get("labels"), batch.get("turns")
        sample_ids = batch.get("ids") or [str(i) for i in range(len(input_ids))]
        images = self.image_embeddings(batch)
        placeholders = int(((input_ids == IMAGE_TOKEN_INDEX) & attention_mask).sum())
        available = 0 if images is None else images.shape[0]
        if placeholders != available:
            raise ValueError(f"the batch has {placeholders} image placeholders but {available} images")
        embed = self.causal_lm.get_input_embeddings()
        # The sentinel is no vocabulary id; its row is looked up as the pad token and then replaced.
        text = embed(input_ids.masked_fill(input_ids == IMAGE_TOKEN_INDEX, self.pad_token_id))
        sequences, targets, row_turns = [], [], []
        consumed = 0
        for b in range(input_ids.shape[0]):
            ids, row = input_ids[b][attention_mask[b]], text[b][attention_mask[b]]
            row_labels = labels[b][attention_mask[b]] if labels is not None else None
            row_turn = turns[b][attention_mask[b]] if turns is not None else None
            pieces, label_pieces, turn_pieces, start = [], [], [], 0
            for position in (ids == IMAGE_TOKEN_INDEX).nonzero().flatten().tolist():
                image = images[consumed]
                consumed += 1
                pieces += [row[start:position], image]
                if row_labels is not None:
                    label_pieces += [
                        row_labels[start:position],
                        row_labels.new_full((image.shape[0],), IGNORE_INDEX),
                    ]
                if row_turn is not None:
                    turn_pieces += [row_turn[start:position], row_turn[position].repeat(image.shape[0])]
                start = position + 1
            pieces.append(row[start:])
            sequences.append(torch.cat(pieces)[: self.max_length])
            if row_turn is not None:
                turn_pieces.append(row_turn[start:])
                row_turns.append(torch.cat(turn_pieces)[: self.max_length])
            if row_labels is not None:
                label_pieces.append(row_labels[start:])
                target = torch.cat(label_pieces)[: self.max_length]
                if not (target != IGNORE_INDEX).any():
                    raise ConversationError(
                        f"sample {sample_ids[b]!r}: no supervised token left after cutting the sequence "
                        f"to max_length={self.max_length}"
                    )
                targets.append(target)
        return self._pad(
            sequences,
            targets if labels is not None else None,
            row_turns if turns is not None else None,
            padding_side,
        )

    def _pad(
        self,
        sequences: list[torch.Tensor],
        targets: list[torch.Tensor] | None,
        turns: list[torch.Tensor] | None,
        padding_side: str,
    ) -> dict[str, Any]:
        batch, length = len(sequences), max(len(s) for s in sequences)
        first = sequences[0]
        inputs_embeds = first.new_zeros((batch, length, first.shape[-1]))
        attention_mask = torch.zeros((batch, length), dtype=torch.long, device=first.device)
        labels = torch.full((batch, length), IGNORE_INDEX, dtype=torch.long, device=first.device)
        turn_ids = torch.full((batch, length), PAD, dtype=torch.long, device=first.device)
        for b, sequence in enumerate(sequences):
            span = (
                slice(0, len(sequence)) if padding_side == "right" else slice(length - len(sequence), length)
            )
            inputs_embeds[b, span] = sequence
            attention_mask[b, span] = 1
            if targets is not None:
                labels[b, span] = targets[b]
            if turns is not None:
                turn_ids[b, span] = turns[b]
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        prepared = {
            "inputs_embeds": inputs_embeds,
            "attention_mask": attention_mask,
            "position_ids": position_ids,
        }
        if turns is not None:
            prepared["attention_mask"], prepared["position_ids"] = turn_attention(turn_ids, first.dtype)
        if targets is not None:
            prepared["labels"] = labels
        return prepared

    def forward(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """The LM's mean cross entropy over the batch's supervised tokens."""
        if batch.get("labels") is None:
            raise ValueError("forward needs a batch with labels (encode the conversations for training)")
        inputs = self.prepare_inputs(batch, padding_side="right")
        labels = inputs.pop("labels")
        # Position p predicts token p + 1. Only positions that predict a supervised token (in any row)
        # go through the output head, which the LM applies itself (with any logit post-processing):
        # with short answers after long prompts and image tokens, a vocabulary-wide projection at every
        # position is mostly wasted (1.23x faster steps with SmolLM2-135M, bench_mllm_step.py).
        keep = (labels[:, 1:] != IGNORE_INDEX).any(0).nonzero().flatten()
        logits = self.causal_lm(**inputs, use_cache=False, logits_to_keep=keep).logits
        targets = labels[:, keep + 1]
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX)
