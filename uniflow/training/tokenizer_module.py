"""TokenizerModule: trains a UniFlowTokenizer with L = lambda_d L_dist + lambda_f L_flow.

The loss itself is the tokenizer's (``training_losses``); this module adds what a run needs around it:
AdamW with the encoder in its own parameter group, warm-up + cosine schedule, an EMA of the trainable
weights (used for validation and export), per-step noise that depends only on (seed, step, rank) so a
resumed run draws exactly the noise the uninterrupted one would, a stop on non-finite values, FSDP2
sharding and torch.compile as switches, and the TensorBoard scalars.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import lightning as L
import numpy as np
import torch
from torchmetrics import MeanMetric

from uniflow.metrics import psnr, ssim
from uniflow.stages import RunConfig
from uniflow.tokenizer import UniFlowTokenizer
from uniflow.tokenizer.config import TokenizerConfig
from uniflow.tokenizer.model import TRAINING_ONLY_PREFIXES
from uniflow.training.ema import copy_weights, ema_decay_at, ema_update
from uniflow.training.finite import CheckedGradientClipping, check_finite
from uniflow.training.schedule import adamw_warmup_cosine, weight_decay_groups


def step_generator(seed: int, step: int, rank: int, device: torch.device) -> torch.Generator:
    """A generator seeded from (seed, step, rank) alone, so the noise of a step survives a resume."""
    state = int(np.random.SeedSequence([seed, step, rank]).generate_state(1, dtype=np.uint64)[0])
    return torch.Generator(device=device).manual_seed(state)


def weightless(cfg: TokenizerConfig) -> TokenizerConfig:
    """``cfg`` with the encoder built without loading weights (they are copied in afterwards)."""
    return dataclasses.replace(
        cfg, encoder=dataclasses.replace(cfg.encoder, pretrained=False, checkpoint=None)
    )


def full_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded state dict on every rank (a collective under FSDP2: every rank must call it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    # cpu_offload=True would leave ranks other than 0 empty; every rank gets the weights here so
    # that they can be compared across ranks.
    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True))


class TokenizerModule(CheckedGradientClipping, L.LightningModule):
    def __init__(self, cfg: RunConfig):
        super().__init__()
        self.cfg = cfg
        self.tokenizer = UniFlowTokenizer(cfg.tokenizer)
        # The averaged weights: a teacher-less tokenizer that starts equal to the live one.
        self.ema: UniFlowTokenizer | None = None
        if cfg.optim.ema_decay > 0:
            self.ema = UniFlowTokenizer(weightless(cfg.tokenizer), for_training=False).requires_grad_(False)
            copy_weights(list(self.ema.parameters()), self._averaged_sources())
            self.ema.eval()
        self._configured = False
        self.val_psnr = MeanMetric()
        self.val_ssim = MeanMetric()

    # ------------------------------------------------------------------ parameters
    def _averaged_sources(self) -> list[torch.nn.Parameter]:
        """The live parameters that the EMA tracks, in the EMA module's parameter order."""
        live = dict(self.tokenizer.named_parameters())
        assert self.ema is not None
        return [live[name] for name, _ in self.ema.named_parameters()]

    def train(self, mode: bool = True) -> TokenizerModule:
        super().train(mode)
        if self.ema is not None:  # the average is only ever evaluated
            self.ema.eval()
        return self

    @property
    def inference_tokenizer(self) -> UniFlowTokenizer:
        """What validation and export use: the EMA when there is one."""
        return self.ema if self.ema is not None else self.tokenizer

    def configure_model(self) -> None:
        if self._configured:
            return
        self._configured = True
        if self.cfg.trainer.compile:
            # In-place compile keeps parameter names, so checkpoints and exports are unaffected.
            for module in (self.tokenizer.student, self.tokenizer.decoder.gtb, self.tokenizer.decoder.head):
                module.compile()
        if getattr(self, "_device_mesh", None) is not None:  # ModelParallelStrategy: FSDP2
            from uniflow.training.fsdp import shard_tokenizer

            mesh = self.device_mesh["data_parallel"]
            shard_tokenizer(self.tokenizer, mesh)
            if self.ema is not None:
                shard_tokenizer(self.ema, mesh)

    def configure_optimizers(self) -> dict[str, Any]:
        o = self.cfg.optim
        encoder = [p for p in self.tokenizer.student.parameters() if p.requires_grad]
        ids = {id(p) for p in encoder}
        rest = [
            p
            for name, p in self.tokenizer.named_parameters()
            if p.requires_grad and id(p) not in ids and not name.startswith("teacher.")
        ]
        groups = weight_decay_groups(encoder, o.weight_decay, o.encoder_lr, "encoder") + weight_decay_groups(
            rest, o.weight_decay, o.lr, "decoder"
        )
        return adamw_warmup_cosine(groups, o, self.cfg.trainer.max_steps)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images = batch["image"]
        generator = step_generator(self.cfg.seed, self.global_step, self.global_rank, images.device)
        out = self.tokenizer.training_losses(images, generator=generator)
        terms = {k: out[k] for k in ("total", "distill", "flow", "lpips") if k in out}
        check_finite(self, {k: v.detach() for k, v in terms.items()}, "loss")
        self.log("train/loss", out["total"], prog_bar=True)
        self.log("train/flow", out["flow"])
        self.log("train/distill", out["distill"])
        if "lpips" in out:
            self.log("train/lpips", out["lpips"])
        if "alpha" in out:
            for layer, alpha, weight in zip(out["layers"], out["alpha"], out["weight"]):
                self.log(f"alpha/layer{layer:02d}", alpha)
                self.log(f"weight/layer{layer:02d}", weight)
            # 1 for the paper's and softmax normalisations; below 1 for the figure's (w^base * softmax),
            # which then scales lambda_d down by this factor: an ablation must not change it unseen.
            self.log("weight/sum", out["weight"].sum())
        return out["total"]

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.ema is not None:
            decay = ema_decay_at(self.global_step - 1, self.cfg.optim.ema_decay, self.cfg.optim.ema_warmup)
            ema_update(list(self.ema.parameters()), self._averaged_sources(), decay)

    # ------------------------------------------------------------------ validation
    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        images = batch["image"]
        # Fixed noise per validation batch: the PSNR curve measures the model, not the draw.
        generator = step_generator(self.cfg.seed, batch_idx, self.global_rank, images.device)
        recon = self.inference_tokenizer.reconstruct(images, 1, generator=generator)
        # Metric objects: Lightning computes the mean over all ranks' images at the epoch end and resets.
        self.val_psnr.update(psnr(images, recon))
        self.val_ssim.update(ssim(images, recon))
        self.log("val/psnr", self.val_psnr, on_epoch=True, prog_bar=True)
        self.log("val/ssim", self.val_ssim, on_epoch=True)

    # ------------------------------------------------------------------ export
    def export_state(self) -> dict[str, torch.Tensor]:
        """Full weights of the inference tokenizer (no teacher); every rank must call it under FSDP2."""
        tok = self.inference_tokenizer
        state = full_state_dict(tok) if getattr(self, "_device_mesh", None) is not None else tok.state_dict()
        return {k: v.detach().cpu() for k, v in state.items() if not k.startswith(TRAINING_ONLY_PREFIXES)}

    def export(self, directory: Any, state: dict[str, torch.Tensor]) -> UniFlowTokenizer:
        """Write ``state`` (from :meth:`export_state`) as a ``from_pretrained`` directory; rank 0 only."""
        plain = UniFlowTokenizer(weightless(self.cfg.tokenizer), for_training=False)
        plain.load_state_dict(state)
        plain.cfg = self.cfg.tokenizer  # keep the original encoder entry (name, source) in config.yaml
        plain.save_pretrained(directory)
        return plain
