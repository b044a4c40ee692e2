"""GeneratorModule: trains a FlowDiT or an ARFlow (``generator.model``) on standardised cached latents.

The loss is the model's own (``training_loss``: rectified flow on the latent grid, or the per-token
flow head of the AR model); this module adds what a run needs around it, as the tokenizer's does:
AdamW with warm-up + cosine, an EMA of the weights (what the grids and the export use), per-step
randomness from (seed, step, rank) so a resumed run draws what the uninterrupted one would, the
stop on non-finite values, FSDP2 sharding and torch.compile as switches, and the loss in TensorBoard.
"""

from __future__ import annotations

import copy
from typing import Any

import lightning as L
import torch

from uniflow.generation.latent_stats import LatentNormalizer
from uniflow.generation.pretrained import LatentGenerator, TokenizerReference
from uniflow.stages import RunConfig
from uniflow.training.ema import ema_decay_at, ema_update
from uniflow.training.finite import CheckedGradientClipping, check_finite
from uniflow.training.schedule import adamw_warmup_cosine, weight_decay_groups
from uniflow.training.tokenizer_module import full_state_dict, step_generator


class GeneratorModule(CheckedGradientClipping, L.LightningModule):
    """One module for both generators: ``generator`` holds the live model, ``ema`` the average."""

    def __init__(
        self,
        cfg: RunConfig,
        latent_shape: tuple[int, int, int],
        image_size: int,
        classes: list[str],
        normalizer: LatentNormalizer,
        tokenizer: TokenizerReference,
    ):
        super().__init__()
        self.cfg = cfg
        g = cfg.generator  # type: ignore[attr-defined]
        # The statistics are a buffer of the bundle: they travel with checkpoints and the export.
        self.generator = LatentGenerator(g, latent_shape, image_size, classes, normalizer, tokenizer)
        self.ema: torch.nn.Module | None = None
        if cfg.optim.ema_decay > 0:
            # Starts equal to the live weights; a resume restores both from the checkpoint.
            self.ema = copy.deepcopy(self.generator.model).requires_grad_(False).eval()
        self._configured = False

    @property
    def model(self) -> torch.nn.Module:
        return self.generator.model

    @property
    def inference_model(self) -> torch.nn.Module:
        """What the grids and the export use: the EMA when there is one."""
        return self.ema if self.ema is not None else self.model

    def train(self, mode: bool = True) -> GeneratorModule:
        super().train(mode)
        if self.ema is not None:  # the average is only ever evaluated
            self.ema.eval()
        return self

    def configure_model(self) -> None:
        if self._configured:
            return
        self._configured = True
        if self.cfg.trainer.compile:
            for block in self._blocks(self.model):  # in place: parameter names stay the same
                block.compile()
        if getattr(self, "_device_mesh", None) is not None:  # ModelParallelStrategy: FSDP2
            from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

            mesh = self.device_mesh["data_parallel"]
            for model in (self.model, self.ema):
                if model is None:
                    continue
                for block in self._blocks(model):
                    fully_shard(block, mesh=mesh)
                fully_shard(model, mesh=mesh)
                # Training and sampling do not go through forward: the root's hooks must run around them.
                for method in ("training_loss", "sample"):
                    register_fsdp_forward_method(model, method)

    @staticmethod
    def _blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
        return [*model.blocks, *getattr(model, "head_blocks", [])]

    def configure_optimizers(self) -> dict[str, Any]:
        o = self.cfg.optim
        params = [p for p in self.model.parameters() if p.requires_grad]
        groups = weight_decay_groups(params, o.weight_decay, o.lr, "generator")
        return adamw_warmup_cosine(groups, o, self.cfg.trainer.max_steps)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        z = self.generator.normalizer.normalize(batch["latent"])
        generator = step_generator(self.cfg.seed, self.global_step, self.global_rank, z.device)
        loss = self.model.training_loss(z, batch["label"], generator=generator)
        check_finite(self, {"loss": loss.detach()}, "loss")
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.ema is not None:
            o = self.cfg.optim
            decay = ema_decay_at(self.global_step - 1, o.ema_decay, o.ema_warmup)
            ema_update(list(self.ema.parameters()), list(self.model.parameters()), decay)

    # ------------------------------------------------------------------ export
    def export_state(self) -> dict[str, torch.Tensor]:
        """Full weights of the inference model; every rank must call it under FSDP2."""
        model = self.inference_model
        sharded = getattr(self, "_device_mesh", None) is not None
        state = full_state_dict(model) if sharded else model.state_dict()
        return {k: v.detach().cpu() for k, v in state.items()}
