"""Drawing primitives and sprites for the synthetic scenes: roadwork objects, distractors, scenery.

`Painter` draws with PIL and records every object's polygons and box (`DrawnObject`), so masks per
class can be rasterised from the same render.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from PIL import Image, ImageDraw

_ORANGE = (255, 110, 0)


@dataclasses.dataclass(frozen=True)
class DrawnObject:
    """One drawn object: its class, whether it stands on the road, its box and polygons (frame px)."""

    kind: str
    on_road: bool
    box: tuple[int, int, int, int]  # x0, y0, x1, y1, clipped to the frame
    polygons: tuple[tuple[tuple[float, float], ...], ...]


class Painter:
    """PIL drawing that records the polygons of the object being drawn, its lights and glowing parts."""

    def __init__(self, img: Image.Image, ink: int = 0) -> None:
        self.img, self.draw = img, ImageDraw.Draw(img)
        self.ink = ink  # > 0: outline every shape of a recorded object this wide (the second style)
        self.emissive = Image.new("L", img.size, 0)  # how much of its brightness a pixel keeps at night
        self._edraw = ImageDraw.Draw(self.emissive)
        self.lights: list[tuple[float, float, float, tuple[int, int, int]]] = []  # x, y, radius, colour
        self._parts: list[tuple[tuple[float, float], ...]] | None = None
        self.drawn: list[DrawnObject] = []  # every recorded object and distractor, in drawing order

    def poly(self, pts, fill, outline=None, width: int = 1, emissive: float = 0.0) -> None:
        """A filled polygon; `emissive` 1 for lights, ~0.6 for retroreflective parts caught by headlights."""
        pts = [(float(x), float(y)) for x, y in pts]
        if self.ink and outline is None and self._parts is not None:
            outline, width = (25, 22, 20), self.ink
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
        self.poly(
            [
                (p0[0] + ox, p0[1] + oy),
                (p1[0] + ox, p1[1] + oy),
                (p1[0] - ox, p1[1] - oy),
                (p0[0] - ox, p0[1] - oy),
            ],
            fill,
        )

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


def vary(colour, rng: np.random.Generator, amount: int = 12) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in colour)


def cone(p: Painter, x: float, yb: float, h: float, rng: np.random.Generator) -> None:
    w, top, base = 0.6 * h, yb - h, yb - 0.12 * h

    def half(y: float) -> float:  # half-width of the cone body at row y
        return 0.05 * w + 0.33 * w * (y - top) / (base - top)

    p.rect(x - w / 2, base, x + w / 2, yb, (35, 35, 35))
    p.poly(
        [(x - half(top), top), (x + half(top), top), (x + half(base), base), (x - half(base), base)],
        vary(_ORANGE, rng, 15),
    )
    y1, y2 = top + 0.35 * (base - top), top + 0.55 * (base - top)
    p.poly(
        [(x - half(y1), y1), (x + half(y1), y1), (x + half(y2), y2), (x - half(y2), y2)],
        (245, 245, 245),
        emissive=0.6,
    )


def barrier(p: Painter, x: float, yb: float, h: float, rng: np.random.Generator) -> None:
    w, bh = h * rng.uniform(1.8, 2.6), max(2.0, 0.26 * h)
    for lx in (x - 0.38 * w, x + 0.38 * w):
        p.rect(lx - 0.03 * w, yb - h, lx + 0.03 * w, yb, (225, 225, 225))
    period = max(2, round(bh))
    yy, xx = np.mgrid[0 : round(bh), 0 : round(w)]
    stripes = ((xx + yy) // period) % 2 == 0
    board = np.where(stripes[..., None], np.uint8(_ORANGE), np.uint8([250, 250, 250])).astype(np.uint8)
    for y0 in (yb - h, yb - 0.55 * h):
        p.paste(board, x - w / 2, y0, emissive=0.5)


def sign(p: Painter, x: float, yb: float, h: float, rng: np.random.Generator, stop: bool = False) -> None:
    """A diamond road-work sign (orange, black border and worker symbol) or a red octagonal stop sign."""
    d = 0.3 * h
    cy = yb - h + d
    p.rect(x - 0.03 * h, cy, x + 0.03 * h, yb, (120, 120, 125))
    t = np.linspace(0, 2 * math.pi, 8 if stop else 4, endpoint=False) + (math.pi / 8 if stop else 0.0)
    colour, border = ((200, 20, 30), (240, 240, 240)) if stop else ((255, 140, 0), (20, 20, 20))
    p.poly(
        list(zip(x + d * np.cos(t), cy + d * np.sin(t), strict=True)),
        vary(colour, rng, 10),
        outline=border,
        width=max(1, round(0.1 * d)),
        emissive=0.5,
    )
    if not stop:
        p.ellipse(x - 0.1 * d, cy - 0.35 * d, 0.1 * d, 0.1 * d, (20, 20, 20))
        p.bar((x - 0.15 * d, cy - 0.2 * d), (x + 0.2 * d, cy + 0.4 * d), max(1.0, 0.12 * d), (20, 20, 20))


def worker(p: Painter, x: float, yb: float, h: float, rng: np.random.Generator) -> None:
    w = 0.3 * h
    vest = ((205, 255, 40), _ORANGE)[int(rng.integers(2))]
    for lx in (x - 0.3 * w, x + 0.05 * w):
        p.rect(lx, yb - 0.47 * h, lx + 0.25 * w, yb, (35, 40, 60))
    for x0, x1, y0, y1 in ((-0.7, -0.45, 0.8, 0.5), (0.45, 0.7, 0.8, 0.5), (-0.5, 0.5, 0.82, 0.45)):
        p.rect(x + x0 * w, yb - y0 * h, x + x1 * w, yb - y1 * h, vest)  # arms and torso in the vest
    for sy in (0.72, 0.58):  # retroreflective stripes
        p.rect(
            x - 0.5 * w,
            yb - sy * h,
            x + 0.5 * w,
            yb - sy * h + max(1.0, 0.04 * h),
            (230, 230, 230),
            emissive=0.7,
        )
    p.ellipse(x, yb - 0.89 * h, 0.26 * w, 0.07 * h, (200, 160, 130))
    hat = ((255, 215, 0), (245, 245, 245), _ORANGE)[int(rng.integers(3))]
    p.ellipse(x, yb - 0.94 * h, 0.32 * w, 0.045 * h, hat)


def construction_vehicle(p: Painter, x: float, yb: float, h: float, rng: np.random.Generator) -> None:
    yellow = vary((250, 190, 0), rng, 15)
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
        p.rect(x - 0.5 * w, yb - 0.75 * h, x + 0.18 * w, yb - 0.22 * h, vary((235, 150, 0), rng, 15))
        p.rect(x + 0.2 * w, yb - 0.85 * h, x + 0.5 * w, yb - 0.22 * h, yellow)
        p.rect(x + 0.3 * w, yb - 0.78 * h, x + 0.46 * w, yb - 0.55 * h, (60, 80, 100))
        for wx in (x - 0.35 * w, x - 0.15 * w, x + 0.35 * w):
            p.ellipse(wx, yb - 0.13 * h, 0.09 * w, 0.13 * h, (30, 30, 30))
        beacon = (x + 0.35 * w, yb - 0.88 * h)
    p.ellipse(beacon[0], beacon[1], 0.05 * h, 0.04 * h, (255, 170, 0), emissive=1.0)
    p.lights.append((beacon[0], beacon[1], 0.06 * h, (255, 160, 20)))


def car(p: Painter, x: float, yb: float, w: float, colour) -> None:
    """A car seen from behind (or the side, for parked ones it does not matter at this size)."""
    h = 0.78 * w
    p.ellipse(x, yb, 0.55 * w, 0.06 * h, (30, 30, 32))
    p.rect(x - 0.42 * w, yb - 0.18 * h, x - 0.25 * w, yb, (22, 22, 22))
    p.rect(x + 0.25 * w, yb - 0.18 * h, x + 0.42 * w, yb, (22, 22, 22))
    p.rect(x - 0.5 * w, yb - 0.58 * h, x + 0.5 * w, yb - 0.12 * h, colour)
    p.poly(
        [
            (x - 0.44 * w, yb - 0.58 * h),
            (x + 0.44 * w, yb - 0.58 * h),
            (x + 0.34 * w, yb - h),
            (x - 0.34 * w, yb - h),
        ],
        colour,
    )
    p.poly(
        [
            (x - 0.38 * w, yb - 0.62 * h),
            (x + 0.38 * w, yb - 0.62 * h),
            (x + 0.3 * w, yb - 0.94 * h),
            (x - 0.3 * w, yb - 0.94 * h),
        ],
        (40, 50, 62),
    )
    for tx in (x - 0.46 * w, x + 0.34 * w):
        p.rect(tx, yb - 0.5 * h, tx + 0.12 * w, yb - 0.4 * h, (190, 15, 20), emissive=1.0)
        p.lights.append((tx + 0.06 * w, yb - 0.45 * h, 0.05 * w, (255, 30, 20)))
    p.rect(x - 0.1 * w, yb - 0.3 * h, x + 0.1 * w, yb - 0.2 * h, (235, 235, 225))


def tree(p: Painter, x: float, yb: float, h: float, rng: np.random.Generator, snow: bool) -> None:
    p.rect(x - 0.04 * h, yb - 0.45 * h, x + 0.04 * h, yb, (90, 65, 40))
    crown = (225, 228, 232) if snow and rng.random() < 0.6 else vary((50, 100, 45), rng, 20)
    p.ellipse(x, yb - 0.65 * h, 0.28 * h, 0.35 * h, crown)


def streetlight(p: Painter, x: float, yb: float, h: float, toward: float) -> None:
    p.rect(x - 0.015 * h, yb - h, x + 0.015 * h, yb, (95, 95, 100))
    lamp = (x + toward * 0.25 * h, yb - h)
    p.bar((x, yb - h), lamp, 0.025 * h, (95, 95, 100))
    p.ellipse(lamp[0], lamp[1] + 0.02 * h, 0.05 * h, 0.02 * h, (255, 235, 190), emissive=1.0)
    p.lights.append((lamp[0], lamp[1] + 0.03 * h, 0.06 * h, (255, 210, 140)))


def building(p: Painter, x0: float, x1: float, yb: float, h: float, colour, rng, dark: bool) -> None:
    p.rect(x0, yb - h, x1, yb, colour)
    win = max(2.0, 0.06 * (x1 - x0))
    if x1 - x0 < 4 * win:
        return
    for wy in np.arange(yb - h + win, yb - 1.5 * win, 2 * win):
        for wx in np.arange(x0 + win, x1 - 1.5 * win, 2 * win):
            lit = dark and rng.random() < 0.35
            p.rect(wx, wy, wx + win, wy + win, (255, 210, 120) if lit else (55, 65, 80), emissive=float(lit))


# Distractors a backbone has to tell from roadwork objects: non-construction vehicles, orange street
# furniture and people in orange or yellow clothes without the worker's retroreflective stripes.
_TRUCK_COLOURS = (
    (235, 235, 235),
    (200, 202, 206),
    (40, 70, 140),
    (170, 30, 35),
    (250, 190, 0),  # school-bus / delivery yellow: the construction vehicles' colour
    (240, 120, 20),  # orange delivery truck
)


def truck(p: Painter, x: float, yb: float, h: float, rng: np.random.Generator) -> None:
    """A non-construction truck seen from the side: a tall box body, a lower cab, two axles, no beacon."""
    w = 2.2 * h
    colour = vary(_TRUCK_COLOURS[int(rng.integers(len(_TRUCK_COLOURS)))], rng, 10)
    cab = vary((235, 235, 235), rng, 15) if rng.random() < 0.5 else colour
    front = 1.0 if rng.random() < 0.5 else -1.0  # the cab on the right or the left
    box0, box1 = sorted((x - front * 0.5 * w, x + front * 0.2 * w))
    p.rect(box0, yb - h, box1, yb - 0.18 * h, colour)
    p.rect(box0, yb - 0.24 * h, box1, yb - 0.18 * h, vary((60, 60, 64), rng, 8))  # chassis rail
    cab0, cab1 = sorted((x + front * 0.22 * w, x + front * 0.5 * w))
    p.rect(cab0, yb - 0.7 * h, cab1, yb - 0.18 * h, cab)
    win0, win1 = sorted((x + front * 0.3 * w, x + front * 0.47 * w))
    p.rect(win0, yb - 0.64 * h, win1, yb - 0.45 * h, (60, 80, 100))
    for wx in (x - front * 0.35 * w, x - front * 0.12 * w, x + front * 0.36 * w):
        p.ellipse(wx, yb - 0.11 * h, 0.07 * w, 0.11 * h, (28, 28, 30))
        p.ellipse(wx, yb - 0.11 * h, 0.03 * w, 0.05 * h, (150, 150, 155))
    p.rect(cab0, yb - 0.3 * h, cab1, yb - 0.25 * h, (235, 220, 170), emissive=1.0)  # lamp strip
    p.lights.append((x + front * 0.48 * w, yb - 0.28 * h, 0.04 * h, (255, 235, 190)))


def trash_bin(p: Painter, x: float, yb: float, h: float, rng: np.random.Generator) -> None:
    """An orange (sometimes yellow) wheelie bin: a plain tapered body, a dark lid, two small wheels."""
    w = 0.6 * h
    colour = vary(((245, 120, 10), (250, 150, 20), (240, 200, 30))[int(rng.integers(3))], rng, 12)
    p.poly(
        [(x - 0.5 * w, yb - 0.9 * h), (x + 0.5 * w, yb - 0.9 * h), (x + 0.42 * w, yb), (x - 0.42 * w, yb)],
        colour,
    )
    p.rect(x - 0.55 * w, yb - h, x + 0.55 * w, yb - 0.88 * h, vary((70, 70, 72), rng, 10))
    for wx in (x - 0.3 * w, x + 0.3 * w):
        p.ellipse(wx, yb - 0.03 * h, 0.1 * w, 0.05 * h, (25, 25, 25))


def pedestrian(p: Painter, x: float, yb: float, h: float, rng: np.random.Generator) -> None:
    """A person in an orange, red or yellow jacket: no retroreflective stripes, no hard hat."""
    w = 0.3 * h
    jacket = vary(
        ((245, 115, 25), (200, 40, 40), (240, 200, 30), (255, 140, 0))[int(rng.integers(4))], rng, 12
    )
    legs = vary(((35, 40, 60), (60, 60, 62), (90, 75, 55))[int(rng.integers(3))], rng, 8)
    for lx in (x - 0.28 * w, x + 0.04 * w):
        p.rect(lx, yb - 0.47 * h, lx + 0.24 * w, yb, legs)
    for x0, x1, y0, y1 in ((-0.66, -0.44, 0.8, 0.48), (0.44, 0.66, 0.8, 0.48), (-0.48, 0.48, 0.82, 0.44)):
        p.rect(x + x0 * w, yb - y0 * h, x + x1 * w, yb - y1 * h, jacket)
    if rng.random() < 0.5:  # a backpack or a shopping bag
        p.rect(x + 0.5 * w, yb - 0.6 * h, x + 0.85 * w, yb - 0.38 * h, vary((60, 50, 45), rng, 20))
    p.ellipse(x, yb - 0.89 * h, 0.25 * w, 0.07 * h, vary((200, 160, 130), rng, 30))
    hair = ((40, 30, 25), (120, 80, 40), (210, 180, 110), (20, 20, 20))[int(rng.integers(4))]
    p.ellipse(x, yb - 0.945 * h, 0.27 * w, 0.035 * h, hair)
