"""Greedy, batched answers from the MLLM probe.

LLaVA-1.5 evaluates with temperature 0 and one beam, and its loaders assert batch size 1 because its
batched path padded on the right. Here prompts are padded on the left, with an attention mask that
hides the padding and position ids that count real tokens only, so each prompt is computed as if it
were alone and an answer does not depend on which other prompts share its batch.

Questions about one image share their start (system prompt, user header, image tokens: about half of
a short prompt). When every prompt of a batch shows one image at the same place, the shared start is
computed once per distinct image and its key/value cache copied to the prompts that show that image;
each prompt's remainder then runs on that cache, right-aligned, at the positions it has alone. The
answers are those of the unshared path (tested); the prompts' prefill, most of the answering time,
shrinks by about the shared part.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from uniflow.understanding.mllm.conversation import IMAGE_TOKEN_INDEX
from uniflow.understanding.mllm.model import MLLMProbe, collate_mllm


def _stop_token_ids(probe: MLLMProbe) -> set[int]:
    """The tokenizer's EOS and any the model's generation config names (chat models end turns with
    their own token, e.g. ``<|im_end|>``)."""
    ids: set[int] = set()
    candidates: list[Any] = [probe.tokenizer.eos_token_id]
    generation_config = getattr(probe.causal_lm, "generation_config", None)
    if generation_config is not None:
        candidates.append(generation_config.eos_token_id)
    for candidate in candidates:
        if isinstance(candidate, int):
            ids.add(candidate)
        elif isinstance(candidate, Iterable):
            ids.update(int(c) for c in candidate)
    return ids


def _cut(text: str, stop_strings: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to the first stop string, and whether one was found."""
    cuts = [text.find(s) for s in stop_strings if s and s in text]
    return (text[: min(cuts)], True) if cuts else (text, False)


@dataclass(frozen=True)
class SharedStart:
    """The start that every prompt of a batch has in common (``length`` tokens, the image placeholder
    among them), the distinct images (``images``: one row of the batch each) and, per row, the index of
    its image in ``images`` (``image_of_row``)."""

    length: int
    images: list[int]
    image_of_row: list[int]


def shared_start(batch: Mapping[str, Any]) -> SharedStart | None:
    """Whether the prompts of ``batch`` (collated, right-padded) share a start worth computing once:
    one image each, inside their common tokens, and fewer distinct images than prompts."""
    input_ids, lengths = batch["input_ids"], batch["attention_mask"].sum(1)
    visuals = batch.get("images") if batch.get("images") is not None else batch.get("image_features")
    rows = input_ids.shape[0]
    if visuals is None or visuals.shape[0] != rows or rows < 2:
        return None
    # Every prompt keeps at least one token of its own: the next token is predicted from its last.
    shortest = int(lengths.min()) - 1
    same = (input_ids[:, :shortest] == input_ids[:1, :shortest]).all(0)
    length = int(same.long().cumprod(0).sum())
    placeholders = (input_ids == IMAGE_TOKEN_INDEX).sum(1)
    if not ((placeholders == 1).all() and (input_ids[0, :length] == IMAGE_TOKEN_INDEX).any()):
        return None
    images: list[int] = []
    image_of_row: list[int] = []
    for row in range(rows):
        match = next((k for k, first in enumerate(images) if torch.equal(visuals[first], visuals[row])), None)
        if match is None:
            images.append(row)
            match = len(images) - 1
        image_of_row.append(match)
    return SharedStart(length, images, image_of_row) if len(images) < rows else None


def _prefill_shared(
    probe: MLLMProbe, batch: Mapping[str, Any], start: SharedStart
) -> tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The shared start's cache (one copy per prompt) and the prompts' remainders, right-aligned:
    their embeddings, the attention mask over start + remainder, and the remainders' position ids."""
    model = probe.causal_lm
    key = "images" if batch.get("images") is not None else "image_features"
    rows = batch["input_ids"][start.images, : start.length]
    head = probe.prepare_inputs(
        {
            "ids": [batch["ids"][i] for i in start.images] if batch.get("ids") else None,
            "input_ids": rows,
            "attention_mask": torch.ones_like(rows),
            key: batch[key][start.images],
        },
        padding_side="right",
    )
    output = model(**head, use_cache=True, logits_to_keep=1)
    cache = output[probe.cache_argument]
    device = head["inputs_embeds"].device  # the model's, where the batch's ids may not be
    cache.batch_select_indices(torch.tensor(start.image_of_row, device=device))
    prefix = head["inputs_embeds"].shape[1]
    lengths = batch["attention_mask"].sum(1).tolist()
    rests = [batch["input_ids"][b, start.length : lengths[b]] for b in range(len(lengths))]
    width = max(len(r) for r in rests)
    embed = model.get_input_embeddings()
    ids = torch.full((len(rests), width), probe.pad_token_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(rests), prefix + width), dtype=torch.long, device=device)
    mask[:, :prefix] = 1
    for b, rest in enumerate(rests):
        ids[b, width - len(rest) :] = rest
        mask[b, prefix + width - len(rest) :] = 1
    positions = prefix + (mask[:, prefix:].cumsum(-1) - 1).clamp(min=0)
    return cache, embed(ids), mask, positions


@torch.no_grad()
def greedy_generate(
    probe: MLLMProbe,
    batch: Mapping[str, Any],
    max_new_tokens: int = 128,
    stop_strings: Sequence[str] = (),
    share_start: bool = True,
) -> list[str]:
    """Greedy answers to a collated batch of generation prompts (see ``encode_conversation``).

    A sequence ends at an EOS token or when its text contains one of ``stop_strings`` (the template's,
    e.g. vicuna_v1's ``</s>`` when the tokenizer reads it as plain text); the answer is the text before
    it, special tokens dropped and surrounding whitespace stripped, as LLaVA's ``model_vqa`` returns it.
    Prompts that share their start and image compute it once (:func:`shared_start`) unless
    ``share_start`` is false.
    """
    was_training = probe.training
    probe.eval()
    try:
        model = probe.causal_lm
        embed = model.get_input_embeddings()
        stop_ids = _stop_token_ids(probe)
        start = shared_start(batch) if share_start else None
        if start is None:
            inputs = probe.prepare_inputs(batch, padding_side="left")
            embeds, attention_mask, position_ids = (
                inputs["inputs_embeds"],
                inputs["attention_mask"],
                inputs["position_ids"],
            )
            cache = None
        else:
            cache, embeds, attention_mask, position_ids = _prefill_shared(probe, batch, start)
        size = embeds.shape[0]
        generated: list[list[int]] = [[] for _ in range(size)]
        finished = [False] * size
        for _ in range(max_new_tokens):
            output = model(
                inputs_embeds=embeds,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=True,
                # Only the last position's logits choose the next token: no vocabulary-wide
                # projection of the prompt's positions.
                logits_to_keep=1,
                **{probe.cache_argument: cache},
            )
            cache = output[probe.cache_argument]
            next_tokens = output.logits[:, -1].argmax(dim=-1)
            for b, token in enumerate(next_tokens.tolist()):
                if finished[b]:
                    continue
                if token in stop_ids:
                    finished[b] = True
                    continue
                generated[b].append(token)
                if stop_strings:
                    finished[b] = _cut(probe.tokenizer.decode(generated[b]), stop_strings)[1]
            if all(finished):
                break
            # A finished sequence keeps stepping with the pad token (its output is ignored), so the
            # batch stays rectangular; its keys only ever reach its own later queries.
            step_tokens = next_tokens.masked_fill(
                torch.tensor(finished, device=next_tokens.device), probe.pad_token_id
            )
            embeds = embed(step_tokens)[:, None]
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones((size, 1))], dim=1)
            position_ids = position_ids[:, -1:] + 1
    finally:
        probe.train(was_training)
    answers = []
    for tokens in generated:
        text = probe.tokenizer.decode(tokens, skip_special_tokens=True)
        answers.append(_cut(text, stop_strings)[0].strip())
    return answers


def generate_answers(
    probe: MLLMProbe,
    samples: Sequence[Mapping[str, Any]],
    batch_size: int = 8,
    max_new_tokens: int = 128,
    stop_strings: Sequence[str] = (),
    share_start: bool = True,
) -> list[str]:
    """Answers to encoded generation samples (the dicts ``collate_mllm`` takes), ``batch_size`` at a time."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    answers: list[str] = []
    for start in range(0, len(samples), batch_size):
        batch = collate_mllm(samples[start : start + batch_size], probe.pad_token_id)
        answers += greedy_generate(probe, batch, max_new_tokens, stop_strings, share_start)
    return answers
