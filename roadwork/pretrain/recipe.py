"""Pretraining the embedded default's tiny DINOv3 on the synthetic corpus (`roadwork pretrain`).

The objective is object-level supervision from what the generator drew, never the roadwork label:
- per view, which kinds it holds (multi-label BCE) from its pooled tokens [CLS, mean, max] (exactly
  the features the pipeline caches), through a linear head;
- per patch, which kinds cover it (multi-label BCE) from each patch token, through a linear head, so
  that patch tokens (hence their max) say "cone here";
- the scene's weather, daytime and environment (softmax) from the pooled tokens.
Views are mirrored and colour-jittered, and half of them get the validator's level-3 distortions
(`degrade`): saturation, contrast, down-and-up scaling, YCbCr noise and blur at its strengths.
The heads are thrown away: what is saved is the `DINOv3ViTModel` alone, its config the tiny one
(`save_pretrained`), loaded by the `backbone` stage with `from_pretrained` like a real checkpoint.

A batch is `scenes_per_batch` corpus scenes with all their views, in an order drawn from the seed, so
the first steps need only their own scenes: a test reruns them and compares with the losses recorded
in the shipped `pretrain.json`. On one machine, with the same thread count, a rerun is bit-identical.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from torch import nn

from roadwork.config import to_dict
from roadwork.features.backbone import TinyBackboneConfig, build_tiny
from roadwork.features.manifest import weights_fingerprint
from roadwork.pretrain.corpus import KINDS, CorpusConfig, present, scene
from roadwork.views import protocols

N_ATTRS = (5, 3, 5)  # weather, daytime, environment classes
RECORD_FILE = "pretrain.json"
FIRST_STEPS = 3  # losses of the first steps, every step, for the reproduction test


@dataclass(frozen=True)
class PretrainConfig:
    """The recipe of the shipped checkpoint (`roadwork pretrain` reproduces it from these defaults)."""

    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    seed: int = 0  # head init, batch order and every augmentation draw (the weights: backbone.tiny.seed)
    steps: int = 6000  # fewer saw less (docs/log.md); the time it takes: docs/benchmarks.md
    scenes_per_batch: int = 8  # x 16 views a scene = 128 views a step
    lr: float = 1e-3  # AdamW peak; linear warmup, then cosine to lr_min
    lr_min: float = 1e-5
    warmup: int = 100
    weight_decay: float = 0.05
    clip: float = 1.0
    patch_weight: float = 1.0  # per-patch kind BCE
    attr_weight: float = 0.3  # weather / daytime / environment cross-entropy
    min_cover_px: float = 4.0  # a kind is in a view when it covers >= this many of its pixels ...
    patch_cover: float = 0.02  # ... and in a patch when it covers >= this share of it
    pos_weight: float = 3.0  # BCE weight of positives (objects are small and rare)
    flip: float = 0.5  # probability of mirroring a view (and its patch grid)
    jitter: float = 0.2  # brightness / contrast / saturation factors in [1 - j, 1 + j] (no hue: orange stays)
    noise: float = 0.03  # Gaussian pixel noise, std drawn in [0, noise]
    degrade: float = 0.5  # share of views given the validator's level-3 distortions (`degrade`)
    rotate: float = 0.0  # share of views turned as a validator's level 1 turns a challenge (`turn`)
    max_angle: float = 20.0  # ... by an angle uniform in [-max_angle, max_angle] degrees
    threads: int = 2  # torch threads: part of what makes a rerun bit-identical
    workers: int = 2  # processes rendering corpus scenes


class Heads(nn.Module):
    """The throwaway heads of the objective."""

    def __init__(self, dim: int):
        super().__init__()
        self.view = nn.Linear(3 * dim, len(KINDS))
        self.patch = nn.Linear(dim, len(KINDS))
        self.attrs = nn.ModuleList([nn.Linear(3 * dim, n) for n in N_ATTRS])


def render(config: CorpusConfig, indices: list[int], workers: int) -> list[dict[str, np.ndarray]]:
    """Scenes `indices`, rendered by `workers` processes (the same arrays for any number of them)."""
    if workers <= 1 or len(indices) < 2:
        return [scene(config, i) for i in indices]
    context = multiprocessing.get_context("spawn")  # forking a process with torch thread pools can hang
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        return list(pool.map(scene, [config] * len(indices), indices, chunksize=8))


def batch_order(config: PretrainConfig) -> list[list[int]]:
    """The scenes of every step: passes over the corpus, each in its own seeded order."""
    per, steps, out, epoch = config.scenes_per_batch, config.steps, [], 0
    while len(out) < steps:
        order = np.random.default_rng([config.seed, epoch]).permutation(config.corpus.scenes).tolist()
        out += [order[i : i + per] for i in range(0, len(order) - per + 1, per)]
        epoch += 1
    return out[:steps]


def jitter(x: torch.Tensor, config: PretrainConfig, g: torch.Generator) -> torch.Tensor:
    """[B, 3, H, W] in [0, 1]: per-view brightness, contrast, saturation and noise."""
    b = x.shape[0]

    def factor() -> torch.Tensor:
        return 1 + config.jitter * (2 * torch.rand(b, 1, 1, 1, generator=g) - 1)

    x = x * factor()
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * factor() + mean
    grey = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
    x = (x - grey) * factor() + grey
    x = x + torch.randn(x.shape, generator=g) * (config.noise * torch.rand(b, 1, 1, 1, generator=g))
    return x.clamp_(0, 1)


# RGB -> YCbCr (BT.601, as the validator's noise and saturation): its first row is the luma
_YCC = torch.tensor([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
_RGB = torch.linalg.inv(_YCC)


def distortion(op: int, k: int, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """The validator's distortion `op` (saturation, contrast, rescale, noise, blur) at strength k + 1."""
    if op == 0:
        luma = torch.einsum("c,bchw->bhw", _YCC[0], x)[:, None]
        return luma + protocols.SATURATION[k] * (x - luma)
    if op == 1:
        return x * protocols.CONTRAST[k]
    if op == 2:
        h, w = x.shape[-2:]
        f = protocols.RESCALE[k]
        small = F.interpolate(x, size=(h // f, w // f), mode="bilinear", align_corners=False)
        return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
    if op == 3:
        ycc = torch.einsum("ij,bjhw->bihw", _YCC, x)
        scale = torch.tensor([protocols.NOISE_SCALE[0], *[protocols.NOISE_SCALE[1]] * 2]).view(1, 3, 1, 1)
        ycc = ycc + math.sqrt(protocols.NOISE_VARIANCE[k]) * scale * torch.randn(ycc.shape, generator=g)
        return torch.einsum("ij,bjhw->bihw", _RGB, ycc)
    kernel = protocols.BLUR_KERNEL[k]
    return TF.gaussian_blur(x, [kernel, kernel], [kernel / 6, kernel / 6])


def turned(x: torch.Tensor, angle: torch.Tensor, zoom: torch.Tensor, mode: str) -> torch.Tensor:
    """[B, C, H, W] each turned about its centre by `angle` [B] radians (counter-clockwise, as
    `protocols.rotate` turns a challenge) and magnified by `zoom` [B]; black outside."""
    cos, sin = angle.cos() / zoom, angle.sin() / zoom
    theta = torch.zeros(len(x), 2, 3)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)


def turn(
    x: torch.Tensor, cover: torch.Tensor, config: PretrainConfig, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """A share `config.rotate` of the views `x` [B, 3, H, W] turned by an angle uniform in +-max_angle,
    nearest-neighbour with black fill as the validator's level 1 turns a challenge, their cover grids
    [B, K, g, g] turned alike. Half of the turned views are magnified until no black corner is left (a
    tile inside a turned frame), the others keep their corners (a tile at its edge)."""
    if config.rotate <= 0:  # draws nothing: the recipe without it is unchanged
        return x, cover
    b = len(x)
    on = torch.rand(b, generator=g) < config.rotate
    angle = (2 * torch.rand(b, generator=g) - 1) * math.radians(config.max_angle)
    inside = torch.rand(b, generator=g) < 0.5
    rows = on.nonzero().flatten()
    if len(rows):
        a = angle[rows]
        zoom = torch.where(inside[rows], a.cos().abs() + a.sin().abs(), torch.ones_like(a))
        x, cover = x.clone(), cover.clone()
        x[rows] = turned(x[rows], a, zoom, "nearest")
        share = turned(cover[rows].float(), a, zoom, "bilinear")
        cover[rows] = share.round().clamp(0, 255).to(cover.dtype)
    return x, cover


def degrade(x: torch.Tensor, config: PretrainConfig, g: torch.Generator) -> torch.Tensor:
    """[B, 3, H, W] in [0, 1]: a share `config.degrade` of the views distorted as a validator's level 3
    does (each of five distortions at strength 0, 1 or 2, in its order), the rest unchanged. A real
    DINOv3 is pretrained with blur and colour loss among its augmentations; the tiny one sees the ones
    its served inputs carry."""
    on = torch.rand(len(x), generator=g) < config.degrade
    strength = torch.randint(0, 3, (len(x), 5), generator=g) * on[:, None]
    for op in range(5):
        for k in (0, 1):
            rows = (strength[:, op] == k + 1).nonzero().flatten()
            if len(rows):
                x[rows] = distortion(op, k, x[rows], g).clamp(0, 1)
    return x


def step_loss(
    model: nn.Module,
    heads: Heads,
    x: torch.Tensor,
    cover: torch.Tensor,
    attrs: torch.Tensor,
    config: PretrainConfig,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The objective on one batch of normalised views `x` with their cover grids and scene attributes."""
    hidden = model(pixel_values=x).last_hidden_state
    cls, patches = hidden[:, 0], hidden[:, 1 + model.config.num_register_tokens :]
    pooled = torch.cat([cls, patches.mean(1), patches.amax(1)], dim=1)
    in_view = torch.from_numpy(present(cover.numpy(), config.min_cover_px)).float()
    in_patch = (cover.float() / 255 >= config.patch_cover).float().flatten(2).transpose(1, 2)
    weight = torch.tensor(config.pos_weight)
    view = F.binary_cross_entropy_with_logits(heads.view(pooled), in_view, pos_weight=weight)
    patch = F.binary_cross_entropy_with_logits(heads.patch(patches), in_patch, pos_weight=weight)
    attr = sum(F.cross_entropy(h(pooled), attrs[:, i].long()) for i, h in enumerate(heads.attrs)) / len(
        N_ATTRS
    )
    loss = view + config.patch_weight * patch + config.attr_weight * attr
    return loss, {"view": view.item(), "patch": patch.item(), "attr": attr.item()}


def lr_at(step: int, config: PretrainConfig) -> float:
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    t = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr_min + 0.5 * (config.lr - config.lr_min) * (1 + math.cos(math.pi * t))


def pretrain(
    config: PretrainConfig,
    tiny: TinyBackboneConfig,
    *,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    steps: int | None = None,
    log: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """The tiny DINOv3 (`tiny`: its size and initial weights) pretrained for `steps` (default: the
    recipe's) steps; returns the model (eval mode) and the record `pretrain.json` holds."""
    torch.set_num_threads(config.threads)
    torch.use_deterministic_algorithms(True)
    batches = batch_order(config)[: config.steps if steps is None else steps]
    needed = sorted({i for b in batches for i in b})
    scenes = dict(zip(needed, render(config.corpus, needed, config.workers), strict=True))
    model = build_tiny(tiny).train()
    rescale, model.config.pos_embed_rescale = model.config.pos_embed_rescale, None  # views have one size
    torch.manual_seed(config.seed)
    heads, g = Heads(model.config.hidden_size), torch.Generator().manual_seed(config.seed)
    params = [*model.parameters(), *heads.parameters()]
    optimiser = torch.optim.AdamW(
        [
            {"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ],
        lr=config.lr,
    )
    mean_t, std_t = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    record: dict[str, Any] = {"config": to_dict(config), "tiny": to_dict(tiny), "first_steps": [], "log": []}
    started = time.perf_counter()
    for step, indices in enumerate(batches):
        x = torch.from_numpy(np.concatenate([scenes[i]["views"] for i in indices])).permute(0, 3, 1, 2)
        x = x.float().div_(255)
        cover = torch.from_numpy(np.concatenate([scenes[i]["cover"] for i in indices]))
        attrs = torch.from_numpy(
            np.concatenate([np.tile(scenes[i]["attrs"], (len(scenes[i]["views"]), 1)) for i in indices])
        )
        flip = torch.rand(len(x), generator=g) < config.flip  # mirror a view and its patch grid together
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        cover = torch.where(flip[:, None, None, None], cover.flip(-1), cover)
        for group in optimiser.param_groups:
            group["lr"] = lr_at(step, config)
        x, cover = turn(x, cover, config, g)
        x = degrade(jitter(x, config, g), config, g)
        loss, parts = step_loss(model, heads, (x - mean_t) / std_t, cover, attrs, config)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, config.clip)
        optimiser.step()
        entry = {"step": step, "loss": loss.item(), **parts}
        if step < FIRST_STEPS:
            record["first_steps"].append(entry)
        if step % 50 == 0 or step == len(batches) - 1:
            record["log"].append(entry | {"seconds": round(time.perf_counter() - started, 1)})
            if log:
                log(record["log"][-1])
    model.config.pos_embed_rescale = rescale
    model.eval()
    record |= {"steps": len(batches), "fingerprint": weights_fingerprint(model)}
    return model, record


def save_pretrained(model: nn.Module, record: dict[str, Any], out_dir: Path) -> None:
    """The checkpoint (`save_pretrained`: config + safetensors) and its `pretrain.json` record."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    (out_dir / RECORD_FILE).write_text(json.dumps(record, indent=1) + "\n")
