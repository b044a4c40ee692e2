"""Greedy, batched answers from the MLLM probe.

LLaVA-1.5 evaluates with temperature 0 and one beam, and its loaders assert batch size 1 because its
batched path padded on the right. Here prompts are padded on the left, with an attention mask that
hides the padding and position ids that count real tokens only, so each prompt is computed as if it
were alone and an answer does not depend on which other prompts share its batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

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


@torch.no_grad()
def greedy_generate(
    probe: MLLMProbe,
    batch: Mapping[str, Any],
    max_new_tokens: int = 128,
    stop_strings: Sequence[str] = (),
) -> list[str]:
    """Greedy answers to a collated batch of generation prompts (see ``encode_conversation``).

    A sequence ends at an EOS token or when its text contains one of ``stop_strings`` (the template's,
    e.g. vicuna_v1's ``</s>`` when the tokenizer reads it as plain text); the answer is the text before
    it, special tokens dropped and surrounding whitespace stripped, as LLaVA's ``model_vqa`` returns it.
    """
    was_training = probe.training
    probe.eval()
    try:
        inputs = probe.prepare_inputs(batch, padding_side="left")
        model = probe.causal_lm
        embed = model.get_input_embeddings()
        stop_ids = _stop_token_ids(probe)
        embeds, attention_mask, position_ids = (
            inputs["inputs_embeds"],
            inputs["attention_mask"],
            inputs["position_ids"],
        )
        size = embeds.shape[0]
        generated: list[list[int]] = [[] for _ in range(size)]
        finished = [False] * size
        cache = None
        for _ in range(max_new_tokens):
            output = model(
                inputs_embeds=embeds,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=True,
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
) -> list[str]:
    """Answers to encoded generation samples (the dicts ``collate_mllm`` takes), ``batch_size`` at a time."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    answers: list[str] = []
    for start in range(0, len(samples), batch_size):
        batch = collate_mllm(samples[start : start + batch_size], probe.pad_token_id)
        answers += greedy_generate(probe, batch, max_new_tokens, stop_strings)
    return answers
