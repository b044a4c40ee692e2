"""The ``generator`` stage: a FlowDiT or ARFlow on a tokenizer run's cached latents, its export and summary.

``generator.tokenizer`` names the upstream run (``runs/embedded`` style). ``prepare`` makes what the
stage reads: the tokenizer (trained with ``generator.tokenizer_config`` when the run has no export
yet, like the tokenizer stage runs its encoder pretraining) and the latent cache of
``generator.source`` (encoded when it has no manifest yet). The export (``<run>/generator/``) holds
the weights, the latent statistics and the tokenizer's path and hash (:mod:`uniflow.generation.pretrained`).
"""

from __future__ import annotations

import dataclasses
import re
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from uniflow.config import ConfigError
from uniflow.generation.config import GeneratorConfig, GeneratorSummaryConfig
from uniflow.generation.pretrained import EXPORT_NAME, TokenizerReference
from uniflow.run_dir import RunDirectory
from uniflow.stages import Stage
from uniflow.training.callbacks import PeriodicImages
from uniflow.training.run import fingerprints_per_rank

TOKENIZER_EXPORT = "tokenizer"
TOKENIZER_MARKER = "model.safetensors"
LATENTS_DIR = "latents"


def tokenizer_export(cfg: Any) -> Path:
    """The tokenizer export ``generator.tokenizer`` names (FileNotFoundError naming the paths tried)."""
    return RunDirectory.find_export(cfg.generator.tokenizer, TOKENIZER_EXPORT, TOKENIZER_MARKER)


def _tokenizer_run(reference: str) -> Path:
    ref = Path(reference)
    return ref.parent if ref.name == TOKENIZER_EXPORT else ref


def latents_path(g: GeneratorConfig) -> Path:
    """``generator.latents``, else ``<tokenizer run>/latents/<source>[-<size>px][-flip]`` (the source as a file name)."""
    if g.latents:
        return Path(g.latents)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", g.source.strip("/"))
    name += (f"-{g.image_size}px" if g.image_size else "") + ("-flip" if g.flip else "")
    return _tokenizer_run(g.tokenizer) / LATENTS_DIR / name


def _train_tokenizer(cfg: Any, metrics: dict[str, Any]) -> None:
    """Run ``generator.tokenizer_config`` into the run directory ``generator.tokenizer`` names."""
    from uniflow.config import load_config
    from uniflow.training.cli import check_config, run
    from uniflow.training.run import timed

    run_dir = _tokenizer_run(cfg.generator.tokenizer)
    overrides = [f"output_dir={run_dir.parent}", f"name={run_dir.name}", "resume=auto"]
    upstream = load_config(cfg.generator.tokenizer_config, overrides)
    if upstream.stage != "tokenizer":
        raise ConfigError(
            f"config key 'generator.tokenizer_config': {cfg.generator.tokenizer_config} is a "
            f"{upstream.stage!r} config, not a tokenizer config"
        )
    check_config(upstream)
    print(f"tokenizer: no export at {run_dir}, training it with {cfg.generator.tokenizer_config}")
    result, metrics["timing_s"]["tokenizer"] = timed(run, upstream)
    if result is not None:
        metrics["tokenizer"] = {k: result[k] for k in ("steps", "reconstruction") if k in result}


def _prepare(cfg: Any, metrics: dict[str, Any]) -> Any:
    """Train the tokenizer if its run has no export, encode the latent cache if it has no manifest."""
    from uniflow.generation.latent_cache import MANIFEST_FILE, encode_latents
    from uniflow.training.run import timed

    g = cfg.generator
    try:
        export = tokenizer_export(cfg)
    except FileNotFoundError:
        _train_tokenizer(cfg, metrics)
        export = tokenizer_export(cfg)
    print(f"tokenizer: using {export}")
    latents = latents_path(g)
    if (latents / MANIFEST_FILE).is_file():
        print(f"latents: using {latents}")
    else:
        print(f"latents: encoding {g.source} into {latents}")
        _, metrics["timing_s"]["latents"] = timed(
            encode_latents, export, g.source, latents, size=g.image_size, flip=g.flip, seed=cfg.data.seed
        )
        _wait_for(latents / MANIFEST_FILE)
    generator = dataclasses.replace(g, tokenizer=str(export), latents=str(latents))
    return dataclasses.replace(cfg, generator=generator)


def _wait_for(manifest: Path, timeout_s: float = 3600.0, poll_s: float = 5.0) -> None:
    """Ranks other than 0 return from encode_latents before rank 0 has written the manifest."""
    deadline = time.monotonic() + timeout_s
    while not manifest.is_file():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{manifest} did not appear within {timeout_s:.0f} s: did rank 0 fail?")
        time.sleep(poll_s)


def _check(cfg: Any) -> None:
    from uniflow.generation import ARFLOW_SIZES, FLOWDIT_SIZES

    g = cfg.generator
    sizes = FLOWDIT_SIZES if g.model == "flowdit" else ARFLOW_SIZES
    if g.size is not None and g.size not in sizes:
        raise ConfigError(
            f"config key 'generator.size' = {g.size!r} is not a {g.model} size; choose one of {sorted(sizes)}"
        )
    if cfg.optim.ema_decay > 0 and cfg.trainer.precision == "bf16-true":
        raise ConfigError(
            "config key 'optim.ema_decay' > 0 needs the EMA in float32, which trainer.precision=bf16-true "
            "does not keep; use trainer.precision=bf16-mixed or optim.ema_decay=0"
        )
    interval = g.sampling.guidance_interval
    if interval is not None and (len(interval) != 2 or not 0.0 <= interval[0] <= interval[1] <= 1.0):
        raise ConfigError(
            f"config key 'generator.sampling.guidance_interval' must be [lo, hi] with 0 <= lo <= hi <= 1, got {interval}"
        )
    try:
        tokenizer_export(cfg)
        return
    except FileNotFoundError as err:
        missing = str(err)
    if g.tokenizer_config is None:
        raise ConfigError(
            f"config key 'generator.tokenizer': {missing}; train it first (make train-tokenizer) or set "
            "generator.tokenizer_config to a tokenizer config that this stage then trains"
        )
    if not Path(g.tokenizer_config).is_file():
        raise ConfigError(f"config key 'generator.tokenizer_config': file not found: {g.tokenizer_config}")


def _cache(cfg: Any) -> Any:
    from uniflow.generation.latent_cache import LatentShards

    return LatentShards(cfg.generator.latents)


def _module(cfg: Any) -> L.LightningModule:
    from uniflow.training.generator_module import GeneratorModule

    cache = _cache(cfg)
    tokenizer = TokenizerReference.of(cfg.generator.tokenizer)
    if cache.manifest["tokenizer_sha256"] != tokenizer.sha256:
        raise ValueError(
            f"the latent cache {cfg.generator.latents} was encoded by another tokenizer than {tokenizer.path} "
            "(its weights changed since): delete the cache or point generator.latents elsewhere"
        )
    image_size = cache.manifest["image_size"]
    return GeneratorModule(cfg, cache.latent_shape, image_size, cache.classes, cache.normalizer(), tokenizer)


def _data(cfg: Any) -> L.LightningDataModule:
    from uniflow.data.latent_datamodule import LatentDataModule

    return LatentDataModule(
        cfg.generator.latents,
        cfg.data.batch_size,
        num_workers=cfg.data.num_workers,
        seed=cfg.data.seed,
        random_flip=cfg.generator.flip,
    )


def _export(module: Any, trainer: L.Trainer, path: Path) -> dict[str, Any]:
    state = module.export_state()  # a collective under FSDP2: every rank calls it
    fingerprints = fingerprints_per_rank(state, trainer)
    if trainer.is_global_zero:
        decay = module.cfg.optim.ema_decay
        weights = f"EMA (decay {decay:g})" if decay > 0 else "live"
        module.generator.save_pretrained(path, state, weights)
    return {"weights_fingerprint_per_rank": fingerprints}


def _summary(cfg: Any, directory: RunDirectory) -> dict[str, Any]:
    from uniflow.generation.latent_cache import read_manifest

    if not cfg.summary.enabled:
        return {}
    if read_manifest(cfg.generator.latents)["source"]["kind"] != "embedded":
        return {}  # the held-out comparison needs the embedded scenes; ImageNet is scored by `eval`
    from uniflow.generation.evaluate import evaluate_embedded_generator

    return evaluate_embedded_generator(cfg, directory.export(EXPORT_NAME), directory.root)


def _format(metrics: dict[str, Any]) -> str:
    from uniflow.generation.evaluate import format_generator_summary

    return format_generator_summary(metrics) if "frechet_distance" in metrics else ""


class SampleGrid(PeriodicImages):
    """Every ``every_n_steps`` steps (and at the end): a TensorBoard grid of samples of the EMA model
    for fixed classes (``per_class`` columns each) from a fixed seed, decoded through the tokenizer,
    one row per class, without and with guidance. Every rank samples (FSDP2 needs all in each forward);
    rank 0 logs."""

    def __init__(self, every_n_steps: int, per_class: int = 8, seed: int = 0):
        super().__init__(every_n_steps)
        self.per_class, self.seed = per_class, seed
        self.tokenizer: Any = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.tokenizer = pl_module.generator.tokenizer_ref.load(pl_module.device)

    @torch.no_grad()
    def grid(self, pl_module: Any, cfg_scale: float) -> torch.Tensor:
        from torchvision.utils import make_grid

        bundle = pl_module.generator
        labels = torch.arange(bundle.num_classes, device=pl_module.device).repeat_interleave(self.per_class)
        generator = torch.Generator(pl_module.device).manual_seed(self.seed)
        z = bundle.sample_latents(
            labels, generator=generator, cfg_scale=cfg_scale, model=pl_module.inference_model
        )
        images = bundle.decode(self.tokenizer, z, torch.Generator(pl_module.device).manual_seed(self.seed))
        return make_grid(images.float().cpu(), nrow=self.per_class, padding=2, pad_value=1.0)

    def log_images(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.tokenizer is None:
            return
        scales = sorted({1.0, pl_module.generator.cfg.sampling.cfg_scale})
        grids = {scale: self.grid(pl_module, scale) for scale in scales}
        if trainer.is_global_zero and isinstance(trainer.logger, TensorBoardLogger):
            for scale, grid in grids.items():
                trainer.logger.experiment.add_image(
                    f"samples/class_per_row_cfg_{scale:g}", grid, global_step=trainer.global_step
                )


STAGE = Stage(
    name="generator",
    description="class-conditional generator (FlowDiT or ARFlow) on a tokenizer run's cached latents",
    sections={"generator": GeneratorConfig, "summary": GeneratorSummaryConfig},
    module=_module,
    data=_data,
    export_name=EXPORT_NAME,
    export=_export,
    summary=_summary,
    format_summary=_format,
    prepare=_prepare,
    check=_check,
    callbacks=lambda cfg: [SampleGrid(cfg.trainer.image_every_n_steps, seed=cfg.seed)],
)
