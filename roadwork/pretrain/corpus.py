"""The pretraining corpus of the embedded default's backbone: synthetic scenes drawn for it alone.

A scene is a function of (`corpus.seed`, a namespace word, its index): the dataset's units are seeded
by (synth.seed, split hash, unit, purpose), so the two streams never share a generator, hence never an
image (a test checks the bytes). The roadwork label is never drawn: roadwork objects and look-alike
distractors are placed independently (a scene may hold both, or neither), and the targets are what the
generator knows about its pixels, which is what a foundation model trained on the real world has
learnt about cones:
  - `cover` uint8 [V, K, 7, 7]: per view, per object kind (roadwork kinds, distractors, scenery), the
    share (x 255) of each 16 px patch of the 112 px view covered by that kind, from the drawn polygons
    (nearer objects occlude farther ones);
  - `attrs` int8 [3]: the scene's weather, daytime and environment.
Each scene is cut with the pipeline's own code into its 12 planned views, random boxes and boxes around
objects, all squashed to the view side like the pipeline's views.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from roadwork.synth.dataset import (
    DAYTIME_SHARES,
    ENVIRONMENT_SHARES,
    OBJECT_KIND_SHARES,
    WEATHER_SHARES,
    frame_size,
    pick_weighted,
)
from roadwork.synth.scene import (
    DAYTIMES,
    DISTRACTOR_KINDS,
    ENVIRONMENTS,
    ROADWORK_KINDS,
    SCENERY_KINDS,
    WEATHERS,
    Frame,
    SceneSpec,
    render_frames,
)
from roadwork.synth.style import draw_style
from roadwork.views.crops import load_views
from roadwork.views.plan import ViewsConfig, view_boxes
from roadwork.views.protocols import LEVELS, SIZE, challenge_pair, to_jpeg

KINDS = (*ROADWORK_KINDS, *DISTRACTOR_KINDS, *SCENERY_KINDS)  # the per-patch target classes
PATCH = 16  # DINOv3's patch side
NAMESPACE = 0x5EED_C0DE  # second seed word of every corpus scene: no dataset unit uses it


@dataclass(frozen=True)
class CorpusConfig:
    """What the pretraining corpus draws."""

    seed: int = 20260901  # the corpus's own seed
    scenes: int = 6000  # scenes in one pass over the corpus (8 passes in the shipped 6,000 steps)
    scale: float = 0.25  # frame size as a fraction of 1920x1080 / 4032x3024, like `synth.scale`
    phone_share: float = 0.3  # share of 4:3 phone photos
    object_scale: tuple[float, float] = (0.035, 0.10)  # object height / frame height, drawn per scene
    roadwork_rate: float = 0.55  # share of scenes with roadwork objects ...
    objects: tuple[int, int] = (1, 6)  # ... this many of them (inclusive)
    distractor_rate: float = 0.65  # share of scenes with distractors, independently of roadwork ...
    distractors: tuple[int, int] = (1, 3)  # ... this many distinct kinds
    random_crops: int = 2  # boxes of random place and size (0.2-0.8 of the frame) per scene
    object_crops: int = 2  # tile-sized boxes around a random drawn object per scene
    jpeg_quality: int = 90  # like `synth.jpeg_quality`
    challenges: int = 0  # validator-style copies per scene (a level drawn from 0-3, 224 px JPEG q75),
    # cut into their 12 views like a served challenge, the targets following the copy's geometry
    # (one copy gained nothing on the challenges: docs/log.md)
    side: int = 112  # view side in pixels (`extract.side`)
    grid: int = 3  # the planned views' rule (`views.grid`, `views.overlap`)
    overlap: float = 0.25
    # Ways of drawing a scene, with their shares: photo (the dataset's renderer), painted (the synthetic
    # world's second style, each scene its own draw: roadwork.synth.style) and flat (posterised colours,
    # inked edges). A real DINOv3 saw photographs, renders and paintings; the tiny one sees more than one
    # way of drawing the same objects, never the dataset's scenes.
    styles: tuple[tuple[str, float], ...] = (("photo", 0.5), ("painted", 0.25), ("flat", 0.25))


STYLES = ("photo", "painted", "flat")


def flat(image: np.ndarray, levels: int = 5) -> np.ndarray:
    """A uint8 RGB frame drawn flat: smoothed, each channel posterised to `levels` values, dark ink
    along the strong edges (a cartoon's look; cheap enough to draw per scene)."""
    smooth = cv2.medianBlur(image, 5)
    step = 256 / levels
    out = (np.floor(smooth / step) * step + step / 2).astype(np.uint8)
    edges = cv2.Canny(cv2.cvtColor(smooth, cv2.COLOR_RGB2GRAY), 60, 140)
    out[cv2.dilate(edges, np.ones((2, 2), np.uint8)) > 0] = (25, 25, 25)
    return out


def draw_frame(config: CorpusConfig, spec: SceneSpec, rng: np.random.Generator) -> Frame:
    """The scene rendered in a way of drawing drawn by `config.styles`' shares (a photo by default)."""
    names = [name for name, _ in config.styles]
    weights = np.array([share for _, share in config.styles], np.float64)
    style = names[int(rng.choice(len(names), p=weights / weights.sum()))] if len(names) > 1 else names[0]
    if style not in STYLES:
        raise ValueError(f"corpus style {style!r}: expected one of {STYLES}")
    painted = draw_style(rng) if style == "painted" else None
    frame = render_frames(spec, rng.spawn(1)[0], 1, style=painted)[0]
    return (
        Frame(flat(frame.image), frame.objects, frame.distractors, frame.scenery)
        if style == "flat"
        else frame
    )


def scene_rng(config: CorpusConfig, index: int) -> np.random.Generator:
    return np.random.default_rng([config.seed, NAMESPACE, index])


def draw_spec(config: CorpusConfig, rng: np.random.Generator) -> SceneSpec:
    """A scene with roadwork objects and distractors drawn independently (no label exists here)."""
    width, height = frame_size(config.scale, bool(rng.random() < config.phone_share))
    objects: tuple[str, ...] = ()
    if rng.random() < config.roadwork_rate:
        n = int(rng.integers(config.objects[0], config.objects[1] + 1))
        objects = tuple(pick_weighted(rng, OBJECT_KIND_SHARES) for _ in range(n))
    distractors: tuple[str, ...] = ()
    if rng.random() < config.distractor_rate:
        n = int(rng.integers(config.distractors[0], config.distractors[1] + 1))
        distractors = tuple(
            dict.fromkeys(DISTRACTOR_KINDS[int(rng.integers(len(DISTRACTOR_KINDS)))] for _ in range(n))
        )
    weather, daytime, environment = (
        pick_weighted(rng, w) for w in (WEATHER_SHARES, DAYTIME_SHARES, ENVIRONMENT_SHARES)
    )
    scale = float(rng.uniform(*config.object_scale))
    return SceneSpec(width, height, weather, daytime, environment, objects, distractors, scale)


def label_map(frame: Frame, width: int, height: int) -> np.ndarray:
    """uint8 [H, W]: 1 + the KINDS index of the object on top at each pixel, 0 where none is. Painted in
    the renderer's order: the road's yellow line first, then far to near (by the bottom of the box)."""
    drawn = sorted(
        [*frame.objects, *frame.distractors, *frame.scenery],
        key=lambda o: (o.kind != "yellow_line", o.box[3]),
    )
    out = np.zeros((height, width), np.uint8)
    for obj in drawn:
        for polygon in obj.polygons:
            points = np.round(np.asarray(polygon, np.float64) * 8).astype(np.int32)  # 3 fractional bits
            cv2.fillPoly(out, [points], 1 + KINDS.index(obj.kind), lineType=cv2.LINE_8, shift=3)
    return out


def crop_boxes(config: CorpusConfig, frame: Frame, spec: SceneSpec, rng: np.random.Generator) -> np.ndarray:
    """int32 [V, 4]: the 12 planned views, then random boxes, then boxes around drawn objects."""
    width, height = spec.width, spec.height
    boxes = view_boxes(width, height, ViewsConfig(grid=config.grid, overlap=config.overlap)).tolist()

    def box(cx: float, cy: float, f: float) -> list[int]:
        w = min(width, max(config.side // 2, round(width * f)))
        h = min(height, max(config.side // 2, round(min(1.0, f * rng.uniform(0.85, 1.15)) * height)))
        x0 = int(np.clip(round(cx - w / 2), 0, width - w))
        y0 = int(np.clip(round(cy - h / 2), 0, height - h))
        return [x0, y0, x0 + w, y0 + h]

    for _ in range(config.random_crops):
        boxes.append(box(rng.uniform(0, width), rng.uniform(0, height), rng.uniform(0.2, 0.8)))
    objects = [*frame.objects, *frame.distractors, *frame.scenery]
    for _ in range(config.object_crops):
        f = rng.uniform(0.2, 0.5)
        if objects:
            x0, y0, x1, y1 = objects[int(rng.integers(len(objects)))].box
            cx = (x0 + x1) / 2 + rng.uniform(-0.3, 0.3) * f * width
            cy = (y0 + y1) / 2 + rng.uniform(-0.3, 0.3) * f * height
            boxes.append(box(cx, cy, f))
        else:
            boxes.append(box(rng.uniform(0, width), rng.uniform(0, height), f))
    return np.asarray(boxes, np.int32)


def cover_grid(labels: np.ndarray, box: np.ndarray, side: int) -> np.ndarray:
    """uint8 [K, g, g]: share x 255 of each patch of the view `box` (squashed to `side`) covered by each
    kind; g = side / 16."""
    x0, y0, x1, y1 = box.tolist()
    crop = labels[y0:y1, x0:x1]
    grid = side // PATCH
    out = np.zeros((len(KINDS), grid, grid), np.uint8)
    for value in np.unique(crop):
        if value:
            cell = cv2.resize((crop == value).astype(np.float32), (grid, grid), interpolation=cv2.INTER_AREA)
            out[value - 1] = np.round(cell * 255).astype(np.uint8)
    return out


def challenge_copies(
    config: CorpusConfig, jpeg: bytes, labels: np.ndarray, rng: np.random.Generator
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Views and cover grids of `config.challenges` validator-style copies of a frame: what the served
    model sees of a challenge, with the targets carried through the same geometry."""
    views, covers = [], []
    boxes = view_boxes(SIZE, SIZE, ViewsConfig(grid=config.grid, overlap=config.overlap))
    image = Image.open(io.BytesIO(jpeg))
    for _ in range(config.challenges):
        copy, copy_labels = challenge_pair(image, labels, int(rng.integers(0, len(LEVELS))), rng)
        views.append(load_views(to_jpeg(copy), boxes, config.side, size=(SIZE, SIZE)))
        covers.append(np.stack([cover_grid(copy_labels, b, config.side) for b in boxes]))
    return views, covers


def scene(config: CorpusConfig, index: int) -> dict[str, np.ndarray]:
    """Corpus scene `index`: `views` uint8 [V, side, side, 3] (the frame's crops, then its challenge
    copies' views), `cover` uint8 [V, K, g, g], `attrs` int8 [3], `jpeg` (the encoded frame, for the
    test that no dataset image is in the corpus)."""
    rng = scene_rng(config, index)
    spec = draw_spec(config, rng)
    frame = draw_frame(config, spec, rng)
    buffer = io.BytesIO()
    Image.fromarray(frame.image).save(buffer, format="JPEG", quality=config.jpeg_quality)
    boxes = crop_boxes(config, frame, spec, rng)
    labels = label_map(frame, spec.width, spec.height)
    attrs = (WEATHERS.index(spec.weather), DAYTIMES.index(spec.daytime), ENVIRONMENTS.index(spec.environment))
    views, covers = challenge_copies(config, buffer.getvalue(), labels, rng)
    return {
        "views": np.concatenate(
            [load_views(buffer.getvalue(), boxes, config.side, size=(spec.width, spec.height)), *views]
        ),
        "cover": np.concatenate([np.stack([cover_grid(labels, b, config.side) for b in boxes]), *covers]),
        "attrs": np.array(attrs, np.int8),
        "jpeg": np.frombuffer(buffer.getvalue(), np.uint8),
    }


def present(cover: np.ndarray, min_px: float) -> np.ndarray:
    """bool [..., K]: a kind is in a view when it covers at least `min_px` of its pixels."""
    return cover.reshape(*cover.shape[:-2], -1).astype(np.float32).sum(-1) * (PATCH**2 / 255) >= min_px
