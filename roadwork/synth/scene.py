"""Procedural road scenes (numpy + PIL): the pixels of the synthetic dataset.

A scene is drawn once on a canvas a little larger than the frame; each frame of a video is a crop of it
with a small camera shift, its own exposure and noise, and its own rain or snow particles, so frames of
one video are near-duplicates. Weather and daytime change the pixels the way the tags say.

Every drawn roadwork object and distractor is returned with its polygons and box in frame coordinates,
so ground-truth masks per class can be rasterised from the same render.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import partial

import cv2
import numpy as np
from PIL import Image

from roadwork.synth.sprites import (
    DrawnObject,
    Painter,
    barrier,
    building,
    car,
    cone,
    construction_vehicle,
    pedestrian,
    sign,
    streetlight,
    trash_bin,
    tree,
    truck,
    vary,
    worker,
)
from roadwork.synth.style import Style, finish

WEATHERS = ("sunny", "cloudy", "rain", "fog", "snow")
DAYTIMES = ("Light", "Dusk", "Dark")
ENVIRONMENTS = ("Urban", "Suburban", "Rural", "Highway", "Industrial")
ROADWORK_KINDS = ("cone", "barrier", "sign", "worker", "vehicle")
DISTRACTOR_KINDS = (
    "orange_car",
    "stop_sign",
    "yellow_line",
    "orange_building",
    "truck",  # a parked or driving non-construction truck (white, blue, red, yellow or orange)
    "orange_bin",  # an orange or yellow wheelie bin on the sidewalk
    "pedestrian",  # a person in an orange, red or yellow jacket, without stripes or hard hat
)
# Everything else that is recorded (never a label, but a target for pretraining a backbone on objects).
SCENERY_KINDS = ("car", "tree", "streetlight", "building")
# Distractors placed like roadwork objects (the others are drawn by the road surface, skyline or cars).
_PLACED_DISTRACTORS = ("stop_sign", "truck", "orange_bin", "pedestrian")

# Object height relative to object_scale * frame height: a cone is shorter than a sign on its post.
_KIND_HEIGHT = {
    "cone": 0.8,
    "barrier": 0.8,
    "sign": 1.3,
    "worker": 1.2,
    "vehicle": 1.5,
    "stop_sign": 1.3,
    "truck": 1.6,
    "orange_bin": 0.7,
    "pedestrian": 1.2,
}
# Lane-fraction ranges (0 = left road edge, 1 = right edge): [on the road, beside it].
_PLACEMENT = {
    "cone": ((0.55, 0.95), (0.02, 0.2)),
    "barrier": ((0.5, 0.9), (1.02, 1.15)),
    "sign": ((1.05, 1.25), (-0.25, -0.05)),
    "worker": ((0.6, 0.95), (1.02, 1.2)),
    "vehicle": ((0.7, 0.95), (1.1, 1.35)),
    "stop_sign": ((1.05, 1.25), (-0.25, -0.05)),
    "truck": ((0.55, 0.9), (1.1, 1.35)),
    "orange_bin": ((1.02, 1.15), (-0.15, -0.03)),  # on either sidewalk
    "pedestrian": ((1.02, 1.2), (-0.2, -0.03)),
}
# Half the drawn width over the height (the excavator's arm reaches out to one side).
_HALF_WIDTH = {
    "cone": 0.35,
    "barrier": 1.35,
    "sign": 0.35,
    "worker": 0.25,
    "vehicle": 1.4,
    "stop_sign": 0.35,
    "truck": 1.1,
    "orange_bin": 0.33,
    "pedestrian": 0.3,
}
_SKY = {  # (top, horizon) colours
    "sunny": ((70, 130, 210), (175, 205, 235)),
    "cloudy": ((140, 146, 156), (196, 199, 206)),
    "rain": ((100, 105, 115), (156, 160, 168)),
    "fog": ((190, 192, 196), (210, 212, 215)),
    "snow": ((175, 180, 190), (218, 221, 228)),
}
_GROUND = {
    "Urban": (150, 148, 142),
    "Suburban": (92, 130, 62),
    "Rural": (118, 138, 72),
    "Highway": (104, 124, 72),
    "Industrial": (136, 130, 118),
}
_CAR_COLOURS = (
    (235, 235, 235),
    (170, 172, 176),
    (30, 30, 34),
    (40, 60, 120),
    (150, 25, 30),
    (95, 98, 104),
    (35, 80, 50),
)


@dataclasses.dataclass(frozen=True)
class SceneSpec:
    """What to draw; the layout itself comes from the random generator."""

    width: int  # frame size in pixels
    height: int
    weather: str  # one of WEATHERS
    daytime: str  # one of DAYTIMES
    environment: str  # one of ENVIRONMENTS
    objects: tuple[str, ...] = ()  # roadwork objects to draw (ROADWORK_KINDS); empty for a negative
    distractors: tuple[str, ...] = ()  # look-alikes to draw (DISTRACTOR_KINDS)
    object_scale: float = 0.05  # object height as a fraction of the frame height


@dataclasses.dataclass
class Frame:
    """One rendered frame: RGB uint8 pixels [H, W, 3] and what was drawn on it."""

    image: np.ndarray
    objects: list[DrawnObject]
    distractors: list[DrawnObject]
    scenery: list[DrawnObject] = dataclasses.field(default_factory=list)  # SCENERY_KINDS


class _Road:
    """A straight road in perspective: lane fraction s and depth u (0 = horizon, 1 = bottom) -> pixels."""

    def __init__(self, cw: int, ch: int, rng: np.random.Generator) -> None:
        self.cw, self.ch = cw, ch
        self.y_h = ch * rng.uniform(0.36, 0.48)
        self.vx = cw * rng.uniform(0.4, 0.6)
        self.xl, self.xr = cw * rng.uniform(-0.35, 0.05), cw * rng.uniform(0.95, 1.35)
        self.lanes = int(rng.integers(2, 5))

    def y(self, u: float) -> float:
        return self.y_h + (self.ch - self.y_h) * u

    def x(self, s: float, u: float) -> float:
        return self.vx + (self.xl - self.vx) * u + s * self.width(u)

    def width(self, u: float) -> float:
        return (self.xr - self.xl) * u

    def quad(self, s0: float, s1: float, u0: float, u1: float) -> list[tuple[float, float]]:
        return [
            (self.x(s0, u0), self.y(u0)),
            (self.x(s1, u0), self.y(u0)),
            (self.x(s1, u1), self.y(u1)),
            (self.x(s0, u1), self.y(u1)),
        ]


def _skyline(p: Painter, road: _Road, spec: SceneSpec, rng: np.random.Generator) -> None:
    """Buildings, houses or trees standing on the horizon; one of them orange if that distractor is asked."""
    env, dark, y_h = spec.environment, spec.daytime != "Light", road.y_h + 1
    orange_at = int(rng.integers(1, 4)) if "orange_building" in spec.distractors else -1
    x, i = -rng.uniform(0, 0.05 * road.cw), 0
    while x < road.cw:
        off, orange = abs(x - road.vx) / road.cw, i == orange_at
        if env in ("Urban", "Industrial"):  # taller away from the vanishing point: they are nearer
            big = env == "Industrial"
            w = road.cw * rng.uniform(0.05, 0.12) * (1.8 if big else 1.0)
            h = road.ch * rng.uniform(0.06, 0.2) * (0.5 + 2.0 * off) * (0.5 if big else 1.0)
            colour = vary((120, 118, 115), rng, 35)
        elif env == "Suburban" or orange:
            w, h = road.cw * rng.uniform(0.04, 0.08), road.ch * rng.uniform(0.03, 0.06) * (0.6 + off)
            colour = vary((200, 190, 170), rng, 30)
            p.poly(
                [(x - 0.1 * w, y_h - h), (x + 1.1 * w, y_h - h), (x + 0.5 * w, y_h - 1.6 * h)],
                vary((110, 70, 60), rng, 20),
            )
        else:
            w = road.cw * rng.uniform(0.02, 0.06)
            if rng.random() < 0.6:
                th, snow = road.ch * rng.uniform(0.04, 0.09), spec.weather == "snow"
                p.record(
                    "tree", False, lambda x=x, w=w, th=th, s=snow: tree(p, x + w / 2, y_h + 1, th, rng, s)
                )
            x, i = x + w, i + 1
            continue
        if orange:
            colour = vary((225, 115, 45), rng, 12)
            p.record(
                "orange_building",
                False,
                lambda x=x, w=w, h=h, c=colour: building(p, x, x + w, y_h, h, c, rng, dark),
            )
        else:
            p.record(
                "building", False, lambda x=x, w=w, h=h, c=colour: building(p, x, x + w, y_h, h, c, rng, dark)
            )
        x, i = x + w + (road.cw * rng.uniform(0.0, 0.05) if env == "Suburban" else 0.0), i + 1


def _background(spec: SceneSpec, road: _Road) -> Image.Image:
    """Sky gradient above the horizon, ground below it."""
    top, hor = (np.array(c, np.float32) for c in _SKY[spec.weather])
    if spec.daytime == "Dusk":  # a warm glow low on the sky
        top, hor = 0.5 * top + np.float32([35, 30, 55]), 0.4 * hor + np.float32([150, 90, 54])
    yh = int(road.y_h)
    sky = top + (hor - top) * np.linspace(0, 1, yh, dtype=np.float32)[:, None]
    ground = np.array((224, 227, 233) if spec.weather == "snow" else _GROUND[spec.environment], np.float32)
    near = ground * np.linspace(0.85, 1.05, road.ch - yh, dtype=np.float32)[:, None]
    column = np.clip(np.concatenate([sky, near]), 0, 255).astype(np.uint8)[:, None, :]
    return Image.fromarray(column).resize((road.cw, road.ch), Image.Resampling.NEAREST)  # fast broadcast


def _road_surface(p: Painter, road: _Road, spec: SceneSpec, rng: np.random.Generator) -> None:
    """Clouds, the skyline, sidewalks, asphalt and lane markings."""
    if spec.weather in ("sunny", "cloudy"):
        for _ in range(int(rng.integers(1, 5))):
            cx, cy = rng.uniform(0, road.cw), rng.uniform(0.05, 0.7) * road.y_h
            p.ellipse(
                cx,
                cy,
                road.cw * rng.uniform(0.04, 0.12),
                road.y_h * rng.uniform(0.03, 0.08),
                vary((235, 237, 240), rng, 10),
            )
    _skyline(p, road, spec, rng)
    if spec.environment in ("Urban", "Suburban"):
        for s0, s1 in ((-0.12, 0.0), (1.0, 1.12)):
            p.poly(road.quad(s0, s1, 0.0, 1.0), vary((165, 163, 158), rng, 8))
    snow = spec.weather == "snow"
    p.poly(road.quad(0.0, 1.0, 0.0, 1.0), vary((120, 122, 128) if snow else (78, 78, 84), rng, 8))
    white, lw = (235, 235, 230), 0.006
    for s in (0.02, 0.98):
        p.poly(road.quad(s - lw, s + lw, 0.0, 1.0), white)
    period, phase = rng.uniform(2.5, 4.0), rng.uniform(0, 1)
    for k in range(1, road.lanes):
        s = k / road.lanes
        if "yellow_line" in spec.distractors and k == road.lanes // 2:
            quads = [road.quad(c - lw, c + lw, 0.0, 1.0) for c in (s - 2.5 * lw, s + 2.5 * lw)]
            p.record("yellow_line", True, lambda q=quads: [p.poly(quad, (240, 200, 20)) for quad in q])
            continue
        for z in np.arange(1.0 + phase * period, 60.0, period):
            p.poly(road.quad(s - lw, s + lw, 1.0 / (z + 0.4 * period), 1.0 / z), white)


def _place(road: _Road, kind: str, h: float, m: int, rng: np.random.Generator) -> tuple[float, float, bool]:
    """Bottom-centre (x, y) of an object on or beside the road, kept inside every camera crop."""
    on_road = bool(rng.random() < 0.6)
    s = rng.uniform(*_PLACEMENT[kind][0 if on_road else 1])
    u = rng.uniform(0.12, 0.55)
    half = _HALF_WIDTH[kind] * h
    x = float(np.clip(road.x(s, u), 2 * m + half, road.cw - 2 * m - half))
    return x, road.y(u), on_road and 0.0 <= (x - road.x(0, u)) / max(road.width(u), 1.0) <= 1.0


def _items(p: Painter, road: _Road, spec: SceneSpec, rng: np.random.Generator, m: int) -> None:
    """Roadwork objects, distractors, cars and roadside furniture, drawn far to near.

    Objects are placed first; a car or tree that would cover one is left out, so the label stays visible.
    """
    items: list[tuple[float, Callable[[], object]]] = []  # (bottom y, draw)
    boxes: list[tuple[float, float, float, float]] = []  # what must stay visible
    lanes, snow = road.lanes, spec.weather == "snow"
    draw_fns = {
        "cone": cone,
        "barrier": barrier,
        "sign": sign,
        "worker": worker,
        "vehicle": construction_vehicle,
        "stop_sign": partial(sign, stop=True),
        "truck": truck,
        "orange_bin": trash_bin,
        "pedestrian": pedestrian,
    }
    for kind in (*spec.objects, *(d for d in spec.distractors if d in _PLACED_DISTRACTORS)):
        h = spec.object_scale * spec.height * _KIND_HEIGHT[kind] * rng.uniform(0.75, 1.3)
        x, y, on_road = _place(road, kind, h, m, rng)
        for i in range(int(rng.integers(1, 4)) if kind == "cone" else 1):  # cones come in receding rows
            f = 1.0 - 0.12 * i
            xi, yi, hi = road.vx + (x - road.vx) * f, road.y_h + (y - road.y_h) * f, h * f**0.5
            boxes.append((xi - _HALF_WIDTH[kind] * hi, yi - hi, xi + _HALF_WIDTH[kind] * hi, yi))
            draw = partial(draw_fns[kind], p, xi, yi, hi, rng.spawn(1)[0])
            items.append((yi, partial(p.record, kind, on_road, draw)))

    def free(x0: float, y0: float, x1: float, y1: float) -> bool:
        return all(x1 < b[0] or b[2] < x0 or y1 < b[1] or b[3] < y0 for b in boxes)

    n_cars = int(rng.integers(0, 4))
    orange = "orange_car" in spec.distractors
    for k, u in enumerate(rng.uniform(0.06, 0.45, n_cars + orange)):
        x, y, w = road.x((int(rng.integers(lanes)) + 0.5) / lanes, u), road.y(u), 0.75 * road.width(u) / lanes
        distractor = k == n_cars  # the orange car: always drawn (a negative has no objects to cover)
        colour = _CAR_COLOURS[int(rng.integers(len(_CAR_COLOURS)))]
        colour = vary((255, 125, 20), rng, 10) if distractor else colour
        if distractor or free(x - 0.55 * w, y - 0.8 * w, x + 0.55 * w, y):
            draw_car = partial(car, p, x, y, w, colour)
            items.append((y, partial(p.record, "orange_car" if distractor else "car", True, draw_car)))
    for u in rng.uniform(0.05, 0.4, int(rng.integers(1, 4))):
        side, y, env = int(rng.integers(2)), road.y(u), spec.environment
        if env in ("Urban", "Highway", "Industrial") or (env == "Suburban" and rng.random() < 0.5):
            x = road.x((-0.1, 1.1)[side], u)
            draw = partial(streetlight, p, x, y, 0.7 * road.width(u), (1.0, -1.0)[side])
            items.append((y, partial(p.record, "streetlight", False, draw)))
        else:
            x, h = road.x(rng.uniform(*((-0.45, -0.15), (1.15, 1.45))[side]), u), 0.5 * road.width(u)
            if free(x - 0.3 * h, y - h, x + 0.3 * h, y):
                items.append(
                    (y, partial(p.record, "tree", False, partial(tree, p, x, y, h, rng.spawn(1)[0], snow)))
                )
    for _, draw in sorted(items, key=lambda item: item[0]):
        draw()


def _light(arr: np.ndarray, spec: SceneSpec, p: Painter, road: _Road) -> np.ndarray:
    """Dusk: warm and dimmer. Dark: dim and blue, own headlights on the road, glowing lamps and lights."""
    if spec.daytime == "Light":
        return arr
    ch, cw = arr.shape[:2]
    if spec.daytime == "Dark":
        gy = np.exp(-(((np.arange(ch) - ch) / (0.35 * (ch - road.y_h))) ** 2)) * (np.arange(ch) > road.y_h)
        gx = np.exp(-(((np.arange(cw) - cw / 2) / (0.3 * cw)) ** 2))
        pool = (gy[:, None] * gx[None, :]).astype(np.float32)[..., None]
        lit, strength = arr * (np.float32([0.2, 0.22, 0.3]) + 0.55 * pool), 1.0
    else:
        lit, strength = arr * np.float32([0.85, 0.7, 0.58]), 0.35
    emissive = np.asarray(p.emissive, np.float32)[..., None] / 255.0
    lit = lit * (1.0 - emissive) + arr * emissive
    glow = np.zeros_like(arr)
    for x, y, r, colour in p.lights:
        cv2.circle(glow, (round(x), round(y)), max(1, round(r)), colour, -1, cv2.LINE_AA)
    # The halo is smooth: blur it at a quarter of the size, which is ~20x cheaper than at full size.
    small = cv2.resize(glow, (max(1, cw // 4), max(1, ch // 4)), interpolation=cv2.INTER_AREA)
    halo = cv2.resize(cv2.GaussianBlur(small, (0, 0), max(0.5, 0.003 * cw)), (cw, ch))
    lit += strength * (0.6 * glow + 3.0 * halo)
    return lit


def _haze(arr: np.ndarray, spec: SceneSpec, road: _Road) -> np.ndarray:
    """Fog: a haze that thickens towards the horizon; rain: a light one."""
    if spec.weather not in ("fog", "rain"):
        return arr
    depth = np.clip((np.arange(arr.shape[0]) - road.y_h) / (arr.shape[0] - road.y_h), 0, 1)
    dense = (0.4, 0.5) if spec.weather == "fog" else (0.08, 0.15)
    alpha = (dense[0] + dense[1] * np.exp(-depth / 0.35)).astype(np.float32)[:, None, None]
    haze = {"Light": (205, 208, 212), "Dusk": (190, 165, 150), "Dark": (45, 48, 56)}[spec.daytime]
    return arr * (1.0 - alpha) + np.float32(haze) * alpha


def _particles(f: np.ndarray, weather: str, rng: np.random.Generator) -> np.ndarray:
    """Rain streaks or snowflakes, drawn per frame so each frame of a video has its own."""
    if weather not in ("rain", "snow"):
        return f
    h, w = f.shape[:2]
    layer = np.zeros((h, w), np.uint8)
    n = h * w // (1500 if weather == "rain" else 700)
    xs, ys = rng.uniform(0, w, n), rng.uniform(0, h, n)
    if weather == "rain":
        length, slant = rng.uniform(0.02, 0.05, n) * h, rng.uniform(0.1, 0.3)
        for x, y, ln in zip(xs, ys, length, strict=True):
            cv2.line(layer, (int(x), int(y)), (int(x + slant * ln), int(y + ln)), 255, 1, cv2.LINE_AA)
        alpha, value = 0.35, 215.0
    else:
        for x, y, r in zip(xs, ys, rng.integers(1, 3, n), strict=True):
            cv2.circle(layer, (int(x), int(y)), int(r), 255, -1, cv2.LINE_AA)
        alpha, value = 0.85, 245.0
    a = layer[..., None].astype(np.float32) * (alpha / 255.0)
    return f * (1.0 - a) + value * a


def _shift(obj: DrawnObject, ox: int, oy: int, w: int, h: int) -> DrawnObject:
    x0, y0, x1, y1 = obj.box
    box = (max(0, x0 - ox), max(0, y0 - oy), min(w, x1 - ox), min(h, y1 - oy))
    polys = tuple(tuple((x - ox, y - oy) for x, y in poly) for poly in obj.polygons)
    return dataclasses.replace(obj, box=box, polygons=polys)


def render_frames(
    spec: SceneSpec, rng: np.random.Generator, n_frames: int = 1, style: Style | None = None
) -> list[Frame]:
    """Render one scene as `n_frames` near-duplicate frames (a video) with a slowly drifting camera;
    with a `style`, the same scene re-drawn in the second style (`roadwork.synth.style`)."""
    layout, fx = rng.spawn(2)  # the layout does not depend on how many effects draws happen
    m = max(2, round(0.015 * spec.width))  # camera shake margin on each side
    road = _Road(spec.width + 2 * m, spec.height + 2 * m, layout)
    img = _background(spec, road)
    p = Painter(img, ink=style.ink(spec.height) if style else 0)
    _road_surface(p, road, spec, layout)
    _items(p, road, spec, layout, m)
    arr = _haze(_light(np.asarray(img, dtype=np.float32), spec, p, road), spec, road)
    start = fx.integers(0, 2 * m + 1, 2)
    end = np.clip(start + fx.uniform(-m / 2, m / 2, 2), 0, 2 * m)
    frames = []
    for j in range(n_frames):
        noise = 2.0 * fx.standard_normal((64, 64, 3), dtype=np.float32)  # sensor noise, tiled: cheap
        ox, oy = (int(v) for v in np.rint(start + (end - start) * j / max(1, n_frames - 1)))
        f = arr[oy : oy + spec.height, ox : ox + spec.width] * np.float32(fx.uniform(0.985, 1.015))
        f = _particles(f, spec.weather, fx)
        f += np.tile(noise, (spec.height // 64 + 1, spec.width // 64 + 1, 1))[: spec.height, : spec.width]
        if style is not None:
            f = finish(f, style, fx)
        objs = [_shift(o, ox, oy, spec.width, spec.height) for o in p.drawn]
        frames.append(
            Frame(
                np.clip(f, 0, 255).astype(np.uint8),
                [o for o in objs if o.kind in ROADWORK_KINDS],
                [o for o in objs if o.kind in DISTRACTOR_KINDS],
                [o for o in objs if o.kind in SCENERY_KINDS],
            )
        )
    return frames


def render_scene(spec: SceneSpec, rng: np.random.Generator) -> Frame:
    """Render one still frame."""
    return render_frames(spec, rng, 1)[0]
