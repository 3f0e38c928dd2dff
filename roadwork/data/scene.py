"""Procedural road scenes (numpy + PIL): the pixels of the synthetic dataset.

A scene is drawn once on a canvas a little larger than the frame; each frame of a video is a crop of it
with a small camera shift, its own exposure and noise, and its own rain or snow particles, so frames of
one video are near-duplicates. Weather and daytime change the pixels the way the tags say.

Every drawn roadwork object and distractor is returned with its polygons and box in frame coordinates,
so ground-truth masks per class can be rasterised from the same render.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from functools import partial

import cv2
import numpy as np
from PIL import Image, ImageDraw

WEATHERS = ("sunny", "cloudy", "rain", "fog", "snow")
DAYTIMES = ("Light", "Dusk", "Dark")
ENVIRONMENTS = ("Urban", "Suburban", "Rural", "Highway", "Industrial")
ROADWORK_KINDS = ("cone", "barrier", "sign", "worker", "vehicle")
DISTRACTOR_KINDS = ("orange_car", "stop_sign", "yellow_line", "orange_building")

# Object height relative to object_scale * frame height: a cone is shorter than a sign on its post.
_KIND_HEIGHT = {"cone": 0.8, "barrier": 0.8, "sign": 1.3, "worker": 1.2, "vehicle": 1.5, "stop_sign": 1.3}
# Lane-fraction ranges (0 = left road edge, 1 = right edge): [on the road, beside it].
_PLACEMENT = {
    "cone": ((0.55, 0.95), (0.02, 0.2)), "barrier": ((0.5, 0.9), (1.02, 1.15)),
    "sign": ((1.05, 1.25), (-0.25, -0.05)), "worker": ((0.6, 0.95), (1.02, 1.2)),
    "vehicle": ((0.7, 0.95), (1.1, 1.35)), "stop_sign": ((1.05, 1.25), (-0.25, -0.05)),
}
# Half the drawn width over the height (the excavator's arm reaches out to one side).
_HALF_WIDTH = {"cone": 0.35, "barrier": 1.35, "sign": 0.35, "worker": 0.25, "vehicle": 1.4, "stop_sign": 0.35}
_SKY = {  # (top, horizon) colours
    "sunny": ((70, 130, 210), (175, 205, 235)), "cloudy": ((140, 146, 156), (196, 199, 206)),
    "rain": ((100, 105, 115), (156, 160, 168)), "fog": ((190, 192, 196), (210, 212, 215)),
    "snow": ((175, 180, 190), (218, 221, 228)),
}
_GROUND = {"Urban": (150, 148, 142), "Suburban": (92, 130, 62), "Rural": (118, 138, 72),
           "Highway": (104, 124, 72), "Industrial": (136, 130, 118)}
_CAR_COLOURS = ((235, 235, 235), (170, 172, 176), (30, 30, 34), (40, 60, 120), (150, 25, 30),
                (95, 98, 104), (35, 80, 50))
_ORANGE = (255, 110, 0)


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


@dataclasses.dataclass(frozen=True)
class DrawnObject:
    """One drawn object: its class, whether it stands on the road, its box and polygons (frame px)."""

    kind: str
    on_road: bool
    box: tuple[int, int, int, int]  # x0, y0, x1, y1, clipped to the frame
    polygons: tuple[tuple[tuple[float, float], ...], ...]


@dataclasses.dataclass
class Frame:
    """One rendered frame: RGB uint8 pixels [H, W, 3] and what was drawn on it."""

    image: np.ndarray
    objects: list[DrawnObject]
    distractors: list[DrawnObject]


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
        return [(self.x(s0, u0), self.y(u0)), (self.x(s1, u0), self.y(u0)),
                (self.x(s1, u1), self.y(u1)), (self.x(s0, u1), self.y(u1))]


class _Painter:
    """PIL drawing that records the polygons of the object being drawn, its lights and glowing parts."""

    def __init__(self, img: Image.Image) -> None:
        self.img, self.draw = img, ImageDraw.Draw(img)
        self.emissive = Image.new("L", img.size, 0)  # how much of its brightness a pixel keeps at night
        self._edraw = ImageDraw.Draw(self.emissive)
        self.lights: list[tuple[float, float, float, tuple[int, int, int]]] = []  # x, y, radius, colour
        self._parts: list[tuple[tuple[float, float], ...]] | None = None
        self.drawn: list[DrawnObject] = []  # every recorded object and distractor, in drawing order

    def poly(self, pts, fill, outline=None, width: int = 1, emissive: float = 0.0) -> None:
        """A filled polygon; `emissive` 1 for lights, ~0.6 for retroreflective parts caught by headlights."""
        pts = [(float(x), float(y)) for x, y in pts]
        self.draw.polygon(pts, fill=fill, outline=outline, width=width)
        if emissive:
            self._edraw.polygon(pts, fill=round(255 * emissive))
        if self._parts is not None:
            self._parts.append(tuple(pts))

    def rect(self, x0, y0, x1, y1, fill, **kw) -> None:
        self.poly([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], fill, **kw)

    def ellipse(self, cx, cy, rx, ry, fill, **kw) -> None:
        t = np.linspace(0, 2 * math.pi, 16, endpoint=False)
        self.poly(list(zip(cx + rx * np.cos(t), cy + ry * np.sin(t), strict=True)), fill, **kw)

    def bar(self, p0, p1, thick, fill) -> None:
        """A thick straight segment as a quad."""
        dx, dy = p1[0] - p0[0], p1[1] - p0[1]
        n = math.hypot(dx, dy) or 1.0
        ox, oy = -dy / n * thick / 2, dx / n * thick / 2
        self.poly([(p0[0] + ox, p0[1] + oy), (p1[0] + ox, p1[1] + oy),
                   (p1[0] - ox, p1[1] - oy), (p0[0] - ox, p0[1] - oy)], fill)

    def paste(self, arr: np.ndarray, x0: float, y0: float, emissive: float = 0.0) -> None:
        x0, y0 = round(x0), round(y0)
        self.img.paste(Image.fromarray(arr), (x0, y0))
        h, w = arr.shape[:2]
        box = ((x0, y0), (x0 + w, y0), (x0 + w, y0 + h), (x0, y0 + h))
        if emissive:
            self._edraw.polygon(box, fill=round(255 * emissive))
        if self._parts is not None:
            self._parts.append(box)

    def record(self, kind: str, on_road: bool, draw) -> DrawnObject:
        self._parts = []
        draw()
        parts, self._parts = tuple(self._parts), None
        xs = [x for p in parts for x, _ in p]
        ys = [y for p in parts for _, y in p]
        box = (int(min(xs)), int(min(ys)), math.ceil(max(xs)), math.ceil(max(ys)))
        self.drawn.append(DrawnObject(kind, on_road, box, parts))
        return self.drawn[-1]


def _vary(colour, rng: np.random.Generator, amount: int = 12) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in colour)


def _cone(p: _Painter, x: float, yb: float, h: float, rng: np.random.Generator) -> None:
    w, top, base = 0.6 * h, yb - h, yb - 0.12 * h

    def half(y: float) -> float:  # half-width of the cone body at row y
        return 0.05 * w + 0.33 * w * (y - top) / (base - top)

    p.rect(x - w / 2, base, x + w / 2, yb, (35, 35, 35))
    p.poly([(x - half(top), top), (x + half(top), top), (x + half(base), base), (x - half(base), base)],
           _vary(_ORANGE, rng, 15))
    y1, y2 = top + 0.35 * (base - top), top + 0.55 * (base - top)
    p.poly([(x - half(y1), y1), (x + half(y1), y1), (x + half(y2), y2), (x - half(y2), y2)], (245, 245, 245),
           emissive=0.6)


def _barrier(p: _Painter, x: float, yb: float, h: float, rng: np.random.Generator) -> None:
    w, bh = h * rng.uniform(1.8, 2.6), max(2.0, 0.26 * h)
    for lx in (x - 0.38 * w, x + 0.38 * w):
        p.rect(lx - 0.03 * w, yb - h, lx + 0.03 * w, yb, (225, 225, 225))
    period = max(2, round(bh))
    yy, xx = np.mgrid[0 : round(bh), 0 : round(w)]
    stripes = ((xx + yy) // period) % 2 == 0
    board = np.where(stripes[..., None], np.uint8(_ORANGE), np.uint8([250, 250, 250])).astype(np.uint8)
    for y0 in (yb - h, yb - 0.55 * h):
        p.paste(board, x - w / 2, y0, emissive=0.5)


def _sign(p: _Painter, x: float, yb: float, h: float, rng: np.random.Generator, stop: bool = False) -> None:
    """A diamond road-work sign (orange, black border and worker symbol) or a red octagonal stop sign."""
    d = 0.3 * h
    cy = yb - h + d
    p.rect(x - 0.03 * h, cy, x + 0.03 * h, yb, (120, 120, 125))
    t = np.linspace(0, 2 * math.pi, 8 if stop else 4, endpoint=False) + (math.pi / 8 if stop else 0.0)
    colour, border = ((200, 20, 30), (240, 240, 240)) if stop else ((255, 140, 0), (20, 20, 20))
    p.poly(list(zip(x + d * np.cos(t), cy + d * np.sin(t), strict=True)), _vary(colour, rng, 10),
           outline=border, width=max(1, round(0.1 * d)), emissive=0.5)
    if not stop:
        p.ellipse(x - 0.1 * d, cy - 0.35 * d, 0.1 * d, 0.1 * d, (20, 20, 20))
        p.bar((x - 0.15 * d, cy - 0.2 * d), (x + 0.2 * d, cy + 0.4 * d), max(1.0, 0.12 * d), (20, 20, 20))


def _worker(p: _Painter, x: float, yb: float, h: float, rng: np.random.Generator) -> None:
    w = 0.3 * h
    vest = ((205, 255, 40), _ORANGE)[int(rng.integers(2))]
    for lx in (x - 0.3 * w, x + 0.05 * w):
        p.rect(lx, yb - 0.47 * h, lx + 0.25 * w, yb, (35, 40, 60))
    for x0, x1, y0, y1 in ((-0.7, -0.45, 0.8, 0.5), (0.45, 0.7, 0.8, 0.5), (-0.5, 0.5, 0.82, 0.45)):
        p.rect(x + x0 * w, yb - y0 * h, x + x1 * w, yb - y1 * h, vest)  # arms and torso in the vest
    for sy in (0.72, 0.58):  # retroreflective stripes
        p.rect(x - 0.5 * w, yb - sy * h, x + 0.5 * w, yb - sy * h + max(1.0, 0.04 * h), (230, 230, 230),
               emissive=0.7)
    p.ellipse(x, yb - 0.89 * h, 0.26 * w, 0.07 * h, (200, 160, 130))
    hat = ((255, 215, 0), (245, 245, 245), _ORANGE)[int(rng.integers(3))]
    p.ellipse(x, yb - 0.94 * h, 0.32 * w, 0.045 * h, hat)


def _construction_vehicle(p: _Painter, x: float, yb: float, h: float, rng: np.random.Generator) -> None:
    yellow = _vary((250, 190, 0), rng, 15)
    if rng.random() < 0.5:  # excavator: tracks, body, cab, arm and bucket
        w = 1.6 * h
        p.rect(x - w / 2, yb - 0.22 * h, x + w / 2, yb, (50, 50, 50))
        p.rect(x - 0.42 * w, yb - 0.55 * h, x + 0.35 * w, yb - 0.22 * h, yellow)
        p.rect(x - 0.42 * w, yb - 0.95 * h, x - 0.05 * w, yb - 0.55 * h, yellow)
        p.rect(x - 0.36 * w, yb - 0.88 * h, x - 0.12 * w, yb - 0.62 * h, (60, 80, 100))
        elbow, tip = (x + 0.45 * w, yb - 1.0 * h), (x + 0.75 * w, yb - 0.4 * h)
        p.bar((x + 0.15 * w, yb - 0.5 * h), elbow, 0.1 * h, yellow)
        p.bar(elbow, tip, 0.08 * h, yellow)
        tx, ty = tip
        p.poly([(tx - 0.08 * w, ty), (tx + 0.06 * w, ty), (tx + 0.02 * w, ty + 0.3 * h)], (70, 60, 40))
        beacon = (x - 0.24 * w, yb - 0.98 * h)
    else:  # dump truck seen from the side
        w = 2.0 * h
        p.rect(x - 0.5 * w, yb - 0.75 * h, x + 0.18 * w, yb - 0.22 * h, _vary((235, 150, 0), rng, 15))
        p.rect(x + 0.2 * w, yb - 0.85 * h, x + 0.5 * w, yb - 0.22 * h, yellow)
        p.rect(x + 0.3 * w, yb - 0.78 * h, x + 0.46 * w, yb - 0.55 * h, (60, 80, 100))
        for wx in (x - 0.35 * w, x - 0.15 * w, x + 0.35 * w):
            p.ellipse(wx, yb - 0.13 * h, 0.09 * w, 0.13 * h, (30, 30, 30))
        beacon = (x + 0.35 * w, yb - 0.88 * h)
    p.ellipse(beacon[0], beacon[1], 0.05 * h, 0.04 * h, (255, 170, 0), emissive=1.0)
    p.lights.append((beacon[0], beacon[1], 0.06 * h, (255, 160, 20)))


def _car(p: _Painter, x: float, yb: float, w: float, colour) -> None:
    """A car seen from behind (or the side, for parked ones it does not matter at this size)."""
    h = 0.78 * w
    p.ellipse(x, yb, 0.55 * w, 0.06 * h, (30, 30, 32))
    p.rect(x - 0.42 * w, yb - 0.18 * h, x - 0.25 * w, yb, (22, 22, 22))
    p.rect(x + 0.25 * w, yb - 0.18 * h, x + 0.42 * w, yb, (22, 22, 22))
    p.rect(x - 0.5 * w, yb - 0.58 * h, x + 0.5 * w, yb - 0.12 * h, colour)
    p.poly([(x - 0.44 * w, yb - 0.58 * h), (x + 0.44 * w, yb - 0.58 * h),
            (x + 0.34 * w, yb - h), (x - 0.34 * w, yb - h)], colour)
    p.poly([(x - 0.38 * w, yb - 0.62 * h), (x + 0.38 * w, yb - 0.62 * h),
            (x + 0.3 * w, yb - 0.94 * h), (x - 0.3 * w, yb - 0.94 * h)], (40, 50, 62))
    for tx in (x - 0.46 * w, x + 0.34 * w):
        p.rect(tx, yb - 0.5 * h, tx + 0.12 * w, yb - 0.4 * h, (190, 15, 20), emissive=1.0)
        p.lights.append((tx + 0.06 * w, yb - 0.45 * h, 0.05 * w, (255, 30, 20)))
    p.rect(x - 0.1 * w, yb - 0.3 * h, x + 0.1 * w, yb - 0.2 * h, (235, 235, 225))


def _tree(p: _Painter, x: float, yb: float, h: float, rng: np.random.Generator, snow: bool) -> None:
    p.rect(x - 0.04 * h, yb - 0.45 * h, x + 0.04 * h, yb, (90, 65, 40))
    crown = (225, 228, 232) if snow and rng.random() < 0.6 else _vary((50, 100, 45), rng, 20)
    p.ellipse(x, yb - 0.65 * h, 0.28 * h, 0.35 * h, crown)


def _streetlight(p: _Painter, x: float, yb: float, h: float, toward: float) -> None:
    p.rect(x - 0.015 * h, yb - h, x + 0.015 * h, yb, (95, 95, 100))
    lamp = (x + toward * 0.25 * h, yb - h)
    p.bar((x, yb - h), lamp, 0.025 * h, (95, 95, 100))
    p.ellipse(lamp[0], lamp[1] + 0.02 * h, 0.05 * h, 0.02 * h, (255, 235, 190), emissive=1.0)
    p.lights.append((lamp[0], lamp[1] + 0.03 * h, 0.06 * h, (255, 210, 140)))


def _building(p: _Painter, x0: float, x1: float, yb: float, h: float, colour, rng, dark: bool) -> None:
    p.rect(x0, yb - h, x1, yb, colour)
    win = max(2.0, 0.06 * (x1 - x0))
    if x1 - x0 < 4 * win:
        return
    for wy in np.arange(yb - h + win, yb - 1.5 * win, 2 * win):
        for wx in np.arange(x0 + win, x1 - 1.5 * win, 2 * win):
            lit = dark and rng.random() < 0.35
            p.rect(wx, wy, wx + win, wy + win, (255, 210, 120) if lit else (55, 65, 80), emissive=float(lit))


def _skyline(p: _Painter, road: _Road, spec: SceneSpec, rng: np.random.Generator) -> None:
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
            colour = _vary((120, 118, 115), rng, 35)
        elif env == "Suburban" or orange:
            w, h = road.cw * rng.uniform(0.04, 0.08), road.ch * rng.uniform(0.03, 0.06) * (0.6 + off)
            colour = _vary((200, 190, 170), rng, 30)
            p.poly([(x - 0.1 * w, y_h - h), (x + 1.1 * w, y_h - h), (x + 0.5 * w, y_h - 1.6 * h)],
                   _vary((110, 70, 60), rng, 20))
        else:
            w = road.cw * rng.uniform(0.02, 0.06)
            if rng.random() < 0.6:
                _tree(p, x + w / 2, y_h + 1, road.ch * rng.uniform(0.04, 0.09), rng, spec.weather == "snow")
            x, i = x + w, i + 1
            continue
        if orange:
            colour = _vary((225, 115, 45), rng, 12)
            p.record("orange_building", False, lambda x=x, w=w, h=h, c=colour: _building(
                p, x, x + w, y_h, h, c, rng, dark))
        else:
            _building(p, x, x + w, y_h, h, colour, rng, dark)
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


def _road_surface(p: _Painter, road: _Road, spec: SceneSpec, rng: np.random.Generator) -> None:
    """Clouds, the skyline, sidewalks, asphalt and lane markings."""
    if spec.weather in ("sunny", "cloudy"):
        for _ in range(int(rng.integers(1, 5))):
            cx, cy = rng.uniform(0, road.cw), rng.uniform(0.05, 0.7) * road.y_h
            p.ellipse(cx, cy, road.cw * rng.uniform(0.04, 0.12), road.y_h * rng.uniform(0.03, 0.08),
                      _vary((235, 237, 240), rng, 10))
    _skyline(p, road, spec, rng)
    if spec.environment in ("Urban", "Suburban"):
        for s0, s1 in ((-0.12, 0.0), (1.0, 1.12)):
            p.poly(road.quad(s0, s1, 0.0, 1.0), _vary((165, 163, 158), rng, 8))
    snow = spec.weather == "snow"
    p.poly(road.quad(0.0, 1.0, 0.0, 1.0), _vary((120, 122, 128) if snow else (78, 78, 84), rng, 8))
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


def _items(p: _Painter, road: _Road, spec: SceneSpec, rng: np.random.Generator, m: int) -> None:
    """Roadwork objects, distractors, cars and roadside furniture, drawn far to near.

    Objects are placed first; a car or tree that would cover one is left out, so the label stays visible.
    """
    items: list[tuple[float, Callable[[], object]]] = []  # (bottom y, draw)
    boxes: list[tuple[float, float, float, float]] = []  # what must stay visible
    lanes, snow = road.lanes, spec.weather == "snow"
    draw_fns = {"cone": _cone, "barrier": _barrier, "sign": _sign, "worker": _worker,
                "vehicle": _construction_vehicle, "stop_sign": partial(_sign, stop=True)}
    for kind in (*spec.objects, *(d for d in spec.distractors if d == "stop_sign")):
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
        colour = _vary((255, 125, 20), rng, 10) if distractor else colour
        if distractor or free(x - 0.55 * w, y - 0.8 * w, x + 0.55 * w, y):
            car = partial(_car, p, x, y, w, colour)
            items.append((y, partial(p.record, "orange_car", True, car) if distractor else car))
    for u in rng.uniform(0.05, 0.4, int(rng.integers(1, 4))):
        side, y, env = int(rng.integers(2)), road.y(u), spec.environment
        if env in ("Urban", "Highway", "Industrial") or (env == "Suburban" and rng.random() < 0.5):
            x = road.x((-0.1, 1.1)[side], u)
            items.append((y, partial(_streetlight, p, x, y, 0.7 * road.width(u), (1.0, -1.0)[side])))
        else:
            x, h = road.x(rng.uniform(*((-0.45, -0.15), (1.15, 1.45))[side]), u), 0.5 * road.width(u)
            if free(x - 0.3 * h, y - h, x + 0.3 * h, y):
                items.append((y, partial(_tree, p, x, y, h, rng.spawn(1)[0], snow)))
    for _, draw in sorted(items, key=lambda item: item[0]):
        draw()


def _light(arr: np.ndarray, spec: SceneSpec, p: _Painter, road: _Road) -> np.ndarray:
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


def render_frames(spec: SceneSpec, rng: np.random.Generator, n_frames: int = 1) -> list[Frame]:
    """Render one scene as `n_frames` near-duplicate frames (a video) with a slowly drifting camera."""
    layout, fx = rng.spawn(2)  # the layout does not depend on how many effects draws happen
    m = max(2, round(0.015 * spec.width))  # camera shake margin on each side
    road = _Road(spec.width + 2 * m, spec.height + 2 * m, layout)
    img = _background(spec, road)
    p = _Painter(img)
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
        objs = [_shift(o, ox, oy, spec.width, spec.height) for o in p.drawn]
        frames.append(Frame(np.clip(f, 0, 255).astype(np.uint8),
                            [o for o in objs if o.kind in ROADWORK_KINDS],
                            [o for o in objs if o.kind in DISTRACTOR_KINDS]))
    return frames


def render_scene(spec: SceneSpec, rng: np.random.Generator) -> Frame:
    """Render one still frame."""
    return render_frames(spec, rng, 1)[0]
