"""FSDP2 layout of a tokenizer: which submodules become ``fully_shard`` units.

Units: each encoder block, each encoder adapter as a whole (the frozen teacher too: sharding it
saves its memory), the latent projection, each GTB block, the up projection, the GTB stack and the
flow head, and the tokenizer itself as the one root. The tokenizer is never called through
``forward`` (training and inference use ``training_losses``, ``encode``, ``decode``), so those
methods are registered as forward methods: the root's hooks then run around them, which gives one
lazy initialisation for the whole tree, and every inner unit frees its gathered weights after its
forward even in no-grad inference (a root would keep them, and with several roots each top-level
unit would be one).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from uniflow.encoders import EncoderAdapter
from uniflow.tokenizer import UniFlowTokenizer

# The tokenizer methods that run its submodules (FSDP treats them like forward).
FORWARD_METHODS = ("training_losses", "encode_features", "encode", "decode")
# Where the backends keep their blocks: timm, open_clip, Hugging Face (two naming styles).
BLOCK_PATHS = ("model.blocks", "model.transformer.resblocks", "model.encoder.layers", "model.encoder.layer")


def encoder_blocks(encoder: EncoderAdapter) -> nn.Module:
    """The encoder's container of ``depth`` transformer blocks (a ModuleList or Sequential)."""
    for path in BLOCK_PATHS:
        module: Any = encoder
        for name in path.split("."):
            module = getattr(module, name, None)
        if isinstance(module, (nn.ModuleList, nn.Sequential)) and len(module) == encoder.depth:
            return module
    raise ValueError(
        f"no container of {encoder.depth} blocks at any of {list(BLOCK_PATHS)} in {type(encoder).__name__}"
    )


def shard_tokenizer(tokenizer: UniFlowTokenizer, mesh: Any) -> None:
    """Apply FSDP2 ``fully_shard`` to ``tokenizer``'s units on the data-parallel ``mesh``, in place."""
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    for encoder in (tokenizer.student, tokenizer.teacher):
        if encoder is None:
            continue
        for block in encoder_blocks(encoder):
            fully_shard(block, mesh=mesh)
        fully_shard(encoder, mesh=mesh)
    fully_shard(tokenizer.latent, mesh=mesh)
    decoder = tokenizer.decoder
    for block in decoder.gtb.blocks:
        fully_shard(block, mesh=mesh)
    for unit in (decoder.up, decoder.gtb, decoder.head):
        fully_shard(unit, mesh=mesh)
    fully_shard(tokenizer, mesh=mesh)
    for method in FORWARD_METHODS:
        register_fsdp_forward_method(tokenizer, method)
