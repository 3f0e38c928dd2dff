"""The `generate` section of the params: which model draws the generated rows, how many, and how."""

from __future__ import annotations

import dataclasses
import re

MODEL_NONE = "none"  # generate nothing: an empty dataset
MODEL_SYNTHETIC = "synthetic"  # the embedded default's stand-in: the synthetic world's second style
DTYPES = ("float32", "float16", "bfloat16")
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


@dataclasses.dataclass(frozen=True)
class GenerateConfig:
    """The `generate` section of params.yaml."""

    # "none" | "synthetic" | a Hugging Face id or local directory of an SDXL pipeline (the validator's is
    # stabilityai/stable-diffusion-xl-base-1.0)
    model: str
    i2i_fraction: float  # share of the training rows re-drawn image-to-image (drawn per row by hash)
    t2i_fraction: float  # share of the training rows whose description prompts a new text-to-image scene
    seed: int  # which rows get which task, and every generated row's seed, are functions of this
    shard_rows: int  # generated rows per output shard: the unit of writing, resuming and of work per rank
    device: str  # auto | cpu | cuda | cuda:N (under torchrun, one GPU per local rank)
    dtype: str  # float32 | float16 | bfloat16: the pipeline's weights (float16 or bfloat16 on a GPU)
    jpeg_quality: int = 90  # JPEG quality of the stored images
    strength: float = 0.7  # image-to-image strength: the share of the denoising schedule re-run
    guidance: float = 8.5  # classifier-free guidance scale (the validator's: 8.5)
    steps: int = 25  # denoising steps (image-to-image runs int(steps * strength) of them)
    t2i_size: int = 1024  # text-to-image output side (the synthetic stand-in uses the source's frame size)
    # Longest side of an image-to-image input (sides rounded down to multiples of 8): SDXL works at
    # 1024; a tiny test pipeline at 64. A smaller image is never enlarged.
    i2i_max_side: int = 1024
    # Processes drawing the synthetic stand-in's shards (CPU work; SDXL runs one process per GPU under
    # torchrun instead). The bytes drawn do not depend on it.
    workers: int = 1

    def __post_init__(self) -> None:
        def fail(key: str, why: str) -> None:
            raise ValueError(f"generate.{key}: {why}")

        if not isinstance(self.model, str) or not self.model.strip():
            fail("model", f"{self.model!r}: expected 'none', 'synthetic', a hub id or a directory")
        for key in ("i2i_fraction", "t2i_fraction"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                fail(key, f"{getattr(self, key)} not in [0, 1]")
        if not 0.0 < self.strength <= 1.0:
            fail("strength", f"{self.strength} not in (0, 1]")
        if self.guidance < 0:
            fail("guidance", f"{self.guidance} is negative")
        if self.steps < 1:
            fail("steps", f"{self.steps}: need at least 1 step")
        if int(self.steps * self.strength) < 1:
            fail("strength", f"{self.strength} x {self.steps} steps leaves no image-to-image step")
        for key in ("t2i_size", "i2i_max_side"):
            if getattr(self, key) < 8 or getattr(self, key) % 8:
                fail(key, f"{getattr(self, key)}: expected a multiple of 8, at least 8")
        if self.workers < 1:
            fail("workers", f"{self.workers}: need at least 1 process")
        if self.shard_rows < 1:
            fail("shard_rows", f"{self.shard_rows}: need at least 1 row per shard")
        if not _DEVICE.match(self.device):
            fail("device", f"{self.device!r}: expected auto, cpu, cuda or cuda:N")
        if self.dtype not in DTYPES:
            fail("dtype", f"{self.dtype!r}: expected one of {list(DTYPES)}")
        if not 1 <= self.jpeg_quality <= 100:
            fail("jpeg_quality", f"{self.jpeg_quality} not in [1, 100]")

    @property
    def enabled(self) -> bool:
        """Whether anything is generated at all."""
        return self.model != MODEL_NONE and (self.i2i_fraction > 0 or self.t2i_fraction > 0)
