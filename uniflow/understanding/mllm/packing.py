"""Training samples that show the same image, packed into one sequence that computes their common
prefix once (``mllm.pack_by_image``).

Single-turn questions about one image share the system prompt, the user header and the image tokens:
with 16 image tokens that is about half of each sequence. Packed, the common prefix comes once, then
each sample's remainder (its *turn*). A turn attends to the prefix and to its own earlier tokens only,
and its positions continue from the prefix, so every token sees exactly the context and positions it
would see in its own sample: the loss equals the separate samples' (tested), on fewer tokens.

``turns`` marks each token: ``PREFIX`` (0) for the common prefix, ``k`` for sample ``k`` (1-based),
``PAD`` (-1) for padding. :func:`turn_attention` turns it into the 4-D mask and the position ids.

One detail keeps the loss exact: the logits at position ``i`` predict token ``i + 1``, and in the packed
row the token before a turn's first token is the previous turn's last, not the prefix's last. So the
prefix ends before a token that is supervised (moved back if needed): a turn's first token is never a
target, and every target is predicted from inside its own turn.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from uniflow.understanding.mllm.conversation import IGNORE_INDEX, IMAGE_TOKEN_INDEX

PREFIX = 0
PAD = -1


def common_prefix_length(samples: Sequence[Mapping[str, Any]]) -> int:
    """Length of the prefix that every sample has in common (token ids and labels), ending before an
    unsupervised token of every sample, and leaving each sample at least one token of its own."""
    shortest = min(len(s["input_ids"]) for s in samples)
    first = samples[0]
    length = 0
    while length < shortest - 1 and all(
        s["input_ids"][length] == first["input_ids"][length]
        and s["labels"][length] == first["labels"][length]
        for s in samples
    ):
        length += 1
    while length > 0 and any(s["labels"][length] != IGNORE_INDEX for s in samples):
        length -= 1
    return length


def pack_samples(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One training item from encoded samples (``id``, ``input_ids``, ``labels``, optional ``image`` or
    ``image_features``) that show the same image: their common prefix once, then each one's remainder,
    with ``turns`` marking which is which. The image placeholder must lie in the common prefix."""
    if not samples:
        raise ValueError("pack_samples: expected at least one sample")
    ids = [str(s["id"]) for s in samples]
    length = common_prefix_length(samples)
    prefix = samples[0]["input_ids"][:length]
    for sample in samples:
        if IMAGE_TOKEN_INDEX in sample["input_ids"][length:]:
            raise ValueError(
                f"samples {ids} cannot be packed: the image placeholder of {sample['id']!r} is not in "
                "their common prefix (pack only samples whose conversations show the image first)"
            )
    input_ids, labels, turns = list(prefix), list(samples[0]["labels"][:length]), [PREFIX] * length
    for k, sample in enumerate(samples, start=1):
        rest = sample["input_ids"][length:]
        input_ids += rest
        labels += sample["labels"][length:]
        turns += [k] * len(rest)
    packed = {"id": "+".join(ids), "input_ids": input_ids, "labels": labels, "turns": turns}
    for key in ("image", "image_features"):
        if samples[0].get(key) is not None:
            packed[key] = samples[0][key]
    return packed


def turn_attention(turns: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The additive attention mask ``B x 1 x L x L`` (0: attend, the dtype's minimum: not) and the
    position ids ``B x L`` of packed rows (``turns``: ``B x L``, ``PAD`` on padding).

    Token ``i`` attends to token ``j <= i`` when ``j`` is in the prefix or in ``i``'s own turn; its
    position is the number of such tokens minus one, which is its position in its own sample. A padding
    token attends to itself only (a row with no key would give NaN in the softmax).
    """
    length = turns.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=turns.device).tril()
    query, key = turns[:, :, None], turns[:, None, :]
    allowed = causal & (key != PAD) & (query != PAD) & ((key == PREFIX) | (key == query))
    position_ids = (allowed.sum(-1) - 1).clamp(min=0)
    allowed |= torch.eye(length, dtype=torch.bool, device=turns.device)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=turns.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None], position_ids
