"""The synthetic dataset: procedural road scenes written in the exact NATIX parquet schema.

Rows come in units (a video of near-duplicate frames, or a single 16:9 frame or 4:3 phone photo). Each
unit is drawn from its own random generator, seeded by (seed, split, unit index), so growing `rows`
keeps the earlier units and the output is byte-identical for the same params whatever the number of
worker processes. After the regular rows, each split gets deliberately broken rows and exact duplicates
for ingest to catch.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import multiprocessing
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
from PIL import Image

from roadwork.data.schema import HF_METADATA, RAW_SCHEMA, TRUTH_FILE, shard_name
from roadwork.synth.scene import DrawnObject, Frame, SceneSpec, render_frames
from roadwork.synth.style import Style, draw_style
from roadwork.synth.text import describe

SCHEMA = RAW_SCHEMA.with_metadata(HF_METADATA)
DATA_DIR = "data"
# Real cities with their real coordinates (lat, lon); GPS is jittered a few km around the centre.
CITIES = (
    ("indianapolis", 39.76838, -86.15804),
    ("pittsburgh", 40.44062, -79.99589),
    ("chicago", 41.87811, -87.62980),
    ("boston", 42.36008, -71.05888),
    ("denver", 39.73915, -104.99025),
    ("seattle", 47.60621, -122.33207),
    ("austin", 30.26715, -97.74306),
    ("atlanta", 33.74900, -84.38798),
    ("phoenix", 33.44838, -112.07404),
    ("columbus", 39.96118, -82.99879),
    ("detroit", 42.33143, -83.04575),
    ("nashville", 36.16266, -86.78160),
)
TEST_SPLIT = "test"  # the split drawn from only `test_cities` cities
_GPS_SIGMA_KM = 3.0
_KM_PER_DEG = 111.32
_ROW_GROUP = 100  # rows per parquet row group, as the hub writes image datasets
_ID_STRIDE = 10_000_000  # ids of split k are k * stride + position: unique across splits
_BAD_INDEX = 1_000_000  # unit numbers of the bad rows start here (their own seeds)
_EPOCH_RANGE = (1_704_067_200, 1_761_955_200)  # 2024-01-01 .. 2025-11-01 UTC
_BAD_GPS = ("[123.0, -86.1]", "[39.7, -186.2]")
_SEED_PLAN, _SEED_RENDER, _SEED_EXTRA, _SEED_STYLE = 1, 2, 3, 4


@dataclasses.dataclass(frozen=True)
class SynthConfig:
    """The `synth` section of params.yaml."""

    seed: int  # the whole dataset is a function of this seed
    rows: dict[str, int]  # regular images per split
    shards: dict[str, int]  # parquet shards per split
    scale: float  # image size as a fraction of the real 1920x1080 / 4032x3024
    phone_share: float  # share of 4:3 phone photos (the rest are 16:9 frames)
    positive_rate: float  # share of roadwork images (drawn per video / photo)
    video_share: float  # share of rows that are frames of a video
    frames_per_video: tuple[int, int]  # frames per video, inclusive range
    objects_per_image: tuple[int, int]  # roadwork objects in a positive image, inclusive range
    object_scale: float  # object height as a fraction of the image height
    distractor_rate: float  # share of negatives with a look-alike (orange car, red sign, ...)
    test_cities: int  # the test split is drawn from this many cities
    gps_null_rate: float  # share of rows without GPS
    bad_rows: int  # extra broken rows per split (truncated JPEG, bad label, bad GPS)
    duplicates: int  # extra exact copies of existing images (the first one crossing splits)
    description_rate: tuple[float, float]  # share of rows with a scene_description: [roadwork, none]
    informative_text: float  # share of roadwork descriptions that name what is drawn
    alteration_rate: tuple[float, float]  # share of rows with a travel_alteration tag: [roadwork, none]
    jpeg_quality: int  # JPEG quality of the stored images
    # Look-alikes in roadwork images too (real work zones have cars, trucks and passers-by), so that a
    # distractor in the picture says nothing about the label.
    positive_distractor_rate: float = 0.0  # share of roadwork images that also show distractors
    distractors_per_image: tuple[int, int] = (1, 2)  # distinct distractor kinds drawn, inclusive range

    def __post_init__(self) -> None:
        def fail(key: str, why: str) -> None:
            raise ValueError(f"synth.{key}: {why}")

        if set(self.rows) != set(self.shards):
            fail("shards", f"splits {sorted(self.shards)} differ from synth.rows splits {sorted(self.rows)}")
        for split, n in self.rows.items():
            if not 1 <= self.shards[split] <= n:
                fail(f"shards.{split}", f"{self.shards[split]} shards for {n} rows (need 1..rows)")
            if n + self.bad_rows + self.duplicates >= _ID_STRIDE:
                fail(f"rows.{split}", f"{n} rows: more than {_ID_STRIDE - 1} per split")
        for key in (
            "phone_share",
            "positive_rate",
            "video_share",
            "distractor_rate",
            "gps_null_rate",
            "informative_text",
            "positive_distractor_rate",
        ):
            if not 0.0 <= getattr(self, key) <= 1.0:
                fail(key, f"{getattr(self, key)} not in [0, 1]")
        if self.phone_share + self.video_share > 1.0:
            fail("phone_share", "phone photos are never video frames: phone_share + video_share > 1")
        for key in ("description_rate", "alteration_rate"):
            if len(getattr(self, key)) != 2 or not all(0.0 <= r <= 1.0 for r in getattr(self, key)):
                fail(key, f"{getattr(self, key)}: expected [roadwork, none] rates in [0, 1]")
        for key in ("frames_per_video", "objects_per_image", "distractors_per_image"):
            lo_hi = getattr(self, key)
            if len(lo_hi) != 2 or not 1 <= lo_hi[0] <= lo_hi[1]:
                fail(key, f"{lo_hi}: expected an inclusive range [lo, hi] with 1 <= lo <= hi")
        if not 0.0 < self.scale <= 1.0 or not 0.0 < self.object_scale < 0.5:
            fail("scale", f"scale {self.scale} / object_scale {self.object_scale} out of range")
        if not 1 <= self.test_cities <= len(CITIES):
            fail("test_cities", f"{self.test_cities} not in [1, {len(CITIES)}]")
        if self.bad_rows < 0 or self.duplicates < 0 or not 1 <= self.jpeg_quality <= 100:
            fail("bad_rows", "bad_rows and duplicates must be >= 0, jpeg_quality in [1, 100]")


@dataclasses.dataclass(frozen=True)
class Unit:
    """A video or a single image: the rows drawn together from one generator."""

    split: str
    index: int  # position in the split's stream of units: seeds the unit
    kind: str  # "video", "frame" (a single 16:9 frame) or "phone" (a 4:3 photo)
    frames: int
    label: int


@dataclasses.dataclass
class SynthRow:
    """One output row (columns of RAW_SCHEMA) and the objects drawn on its image (for masks)."""

    row: dict[str, Any]
    objects: list[DrawnObject]
    distractors: list[DrawnObject]


def _rng(cfg: SynthConfig, split: str, index: int, purpose: int) -> np.random.Generator:
    return np.random.default_rng([cfg.seed, zlib.crc32(split.encode()), index, purpose])


def frame_size(scale: float, phone: bool) -> tuple[int, int]:
    """(width, height) of a 16:9 video frame or a 4:3 phone photo at `scale`, rounded to even ints."""
    w, h = (4032, 3024) if phone else (1920, 1080)
    return 2 * max(1, round(w * scale / 2)), 2 * max(1, round(h * scale / 2))


def split_cities(cfg: SynthConfig, split: str) -> tuple[tuple[str, float, float], ...]:
    """The cities a split is drawn from: `test_cities` of them for the test split, all for the others."""
    if split != TEST_SPLIT:
        return CITIES
    order = np.random.default_rng([cfg.seed, _SEED_EXTRA]).permutation(len(CITIES))
    return tuple(CITIES[i] for i in sorted(order[: cfg.test_cities]))


def plan_split(cfg: SynthConfig, split: str) -> list[Unit]:
    """Units until the split has `rows[split]` rows; both labels are present whenever two units exist."""
    n, (lo, hi) = cfg.rows[split], cfg.frames_per_video
    mean = (lo + hi) / 2
    # Per-unit probabilities that give `video_share` / `phone_share` of the rows in expectation.
    p_video = cfg.video_share / (mean * (1 - cfg.video_share) + cfg.video_share)
    p_phone = cfg.phone_share / (1 - cfg.video_share) if cfg.video_share < 1 else 0.0
    units: list[Unit] = []
    total = 0
    while total < n:
        rng = _rng(cfg, split, len(units), _SEED_PLAN)
        video = rng.random() < p_video
        kind = "video" if video else ("phone" if rng.random() < p_phone else "frame")
        frames = min(int(rng.integers(lo, hi + 1)), n - total) if video else 1
        label = int(rng.random() < cfg.positive_rate)
        units.append(Unit(split, len(units), kind, frames, label))
        total += frames
    if len(units) >= 2 and len({u.label for u in units}) == 1:
        units[-1] = dataclasses.replace(units[-1], label=1 - units[-1].label)
    return units


def bad_unit(cfg: SynthConfig, split: str, i: int) -> Unit:
    """The unit of a split's i-th bad row: a single frame or photo, numbered apart from the regular units."""
    label = int(_rng(cfg, split, _BAD_INDEX + i, _SEED_PLAN).random() < cfg.positive_rate)
    return Unit(split, _BAD_INDEX + i, "phone" if i % 2 else "frame", 1, label)


def row_units(cfg: SynthConfig, split: str) -> list[tuple[Unit, int]]:
    """(unit, frame number) of each rendered row of a split, by position: the regular rows, then the bad
    rows. The duplicates after them copy other rows' bytes and have no unit of their own."""
    regular = [(u, j) for u in plan_split(cfg, split) for j in range(u.frames)]
    return regular + [(bad_unit(cfg, split, i), 0) for i in range(cfg.bad_rows)]


def row_position(cfg: SynthConfig, row_id: int) -> tuple[str, int] | None:
    """(split, position in the split) of a row by its dataset `id`; None for an id no split of `cfg` has."""
    k, position = divmod(int(row_id), _ID_STRIDE)
    return (list(cfg.rows)[k - 1], position) if 1 <= k <= len(cfg.rows) else None


WEATHER_SHARES = {"sunny": 0.35, "cloudy": 0.28, "rain": 0.15, "fog": 0.10, "snow": 0.12}
DAYTIME_SHARES = {"Light": 0.70, "Dusk": 0.12, "Dark": 0.18}
ENVIRONMENT_SHARES = {"Urban": 0.35, "Suburban": 0.25, "Rural": 0.12, "Highway": 0.18, "Industrial": 0.10}
OBJECT_KIND_SHARES = {"cone": 0.3, "barrier": 0.2, "sign": 0.2, "worker": 0.15, "vehicle": 0.15}
_DISTRACTOR_KIND = {
    "orange_car": 0.15,
    "stop_sign": 0.1,
    "yellow_line": 0.1,
    "orange_building": 0.1,
    "truck": 0.2,
    "orange_bin": 0.15,
    "pedestrian": 0.2,
}
_WEATHER_TAGS = {
    "sunny": (["Sunny"], ["Clear"]),
    "cloudy": (["Cloudy"], ["Overcast"]),
    "rain": (["Rainy"], ["Cloudy", "Rainy"]),
    "fog": (["Foggy"], ["Cloudy", "Foggy"]),
    "snow": (["Snowy"], ["Cloudy", "Snowy"]),
}
_WEATHER_TAG_MISSING = 0.08  # share of rows whose weather was not tagged (the pixels still show it)
_ALTER_ROAD = ("Partially Blocked", "Lane Closure", "Lane Shift", "Narrowed Lanes", "Flagger Present")
_ALTER_SIDE = ("Shoulder Closed", "Reduced Speed", "Sidewalk Closed", "Construction Ahead")
_ALTER_NONE = ("Heavy Traffic", "Slow Traffic", "Parked Vehicles")


def pick_weighted(rng: np.random.Generator, weights: dict[str, float]) -> str:
    """One key of `weights`, drawn with probability proportional to its weight."""
    keys = list(weights)
    p = np.array([weights[k] for k in keys])
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


def _list_text(items: list[str], rng: np.random.Generator) -> str:
    """Python-list text as the dataset writes it; an empty list is "[]" or "['None']"."""
    return str(items) if items else ("[]" if rng.random() < 0.5 else "['None']")


def _distractors(cfg: SynthConfig, rng: np.random.Generator) -> tuple[str, ...]:
    """Distinct distractor kinds for one scene (a kind drawn twice is drawn once)."""
    lo, hi = cfg.distractors_per_image
    n = int(rng.integers(lo, hi + 1))
    return tuple(dict.fromkeys(pick_weighted(rng, _DISTRACTOR_KIND) for _ in range(n)))


def scene_spec(
    cfg: SynthConfig,
    label: int,
    size: tuple[int, int],
    rng: np.random.Generator,
    *,
    objects: tuple[str, ...] | None = None,
    weather: str | None = None,
    daytime: str | None = None,
    environment: str | None = None,
) -> SceneSpec:
    """What a scene of `size` (width, height) shows, drawn as the dataset draws it: roadwork objects for
    a roadwork scene, look-alikes, weather, daytime, environment. A value given is used instead of its
    draw (`objects` only for a roadwork scene: a label-0 scene never shows one)."""
    drawn: tuple[str, ...] = ()
    distractors: tuple[str, ...] = ()
    if label:
        if objects is None:
            n = int(rng.integers(cfg.objects_per_image[0], cfg.objects_per_image[1] + 1))
            drawn = tuple(pick_weighted(rng, OBJECT_KIND_SHARES) for _ in range(n))
        else:
            drawn = tuple(objects)
        if cfg.positive_distractor_rate and rng.random() < cfg.positive_distractor_rate:
            distractors = _distractors(cfg, rng)
    elif rng.random() < cfg.distractor_rate:
        distractors = _distractors(cfg, rng)
    return SceneSpec(
        *size,
        weather or pick_weighted(rng, WEATHER_SHARES),
        daytime or pick_weighted(rng, DAYTIME_SHARES),
        environment or pick_weighted(rng, ENVIRONMENT_SHARES),
        drawn,
        distractors,
        cfg.object_scale,
    )


def _gps_track(cfg: SynthConfig, unit: Unit, city, rng: np.random.Generator) -> list[str | None]:
    """GPS per frame: a point a few km around the city centre, moving ~12 m per frame along a heading."""
    _, lat0, lon0 = city
    km = rng.normal(0.0, _GPS_SIGMA_KM, 2)
    heading = rng.uniform(0, 2 * math.pi)
    out: list[str | None] = []
    for j in range(unit.frames):
        north, east = km[0] + 0.012 * j * math.cos(heading), km[1] + 0.012 * j * math.sin(heading)
        lat = lat0 + north / _KM_PER_DEG
        lon = lon0 + east / (_KM_PER_DEG * math.cos(math.radians(lat0)))
        out.append(None if rng.random() < cfg.gps_null_rate else f"[{lat:.8f}, {lon:.8f}]")
    return out


def _encode(image: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _render(
    cfg: SynthConfig, unit: Unit, style: Style | None
) -> tuple[SceneSpec, list[Frame], np.random.Generator]:
    """A unit's scene and frames, and its generator, which the unit's metadata draws continue."""
    rng = _rng(cfg, unit.split, unit.index, _SEED_RENDER)
    spec = scene_spec(cfg, unit.label, frame_size(cfg.scale, unit.kind == "phone"), rng)
    return spec, render_frames(spec, rng.spawn(1)[0], unit.frames, style=style), rng


def unit_frames(cfg: SynthConfig, unit: Unit, style: Style | None = None) -> list[Frame]:
    """The frames of one unit, as the dataset renders them; with a `style`, re-drawn in it."""
    return _render(cfg, unit, style)[1]


def render_unit(job: tuple[SynthConfig, Unit, tuple[tuple[str, float, float], ...], bool]) -> list[SynthRow]:
    """Render one unit's frames and their metadata (ids and image paths are assigned later); `styled`:
    the same scene and metadata, re-drawn in the second style drawn for the unit."""
    cfg, unit, cities, styled = job
    style = draw_style(_rng(cfg, unit.split, unit.index, _SEED_STYLE)) if styled else None
    spec, frames, rng = _render(cfg, unit, style)
    lab = 0 if unit.label else 1  # index into the [roadwork, none] rates
    informative = bool(unit.label) and rng.random() < cfg.informative_text
    text = describe(spec, frames[0].objects, informative, rng)
    # "Sunny" only in daylight; at dusk or night a clear sky is tagged "Clear".
    weather = _WEATHER_TAGS[spec.weather][int(rng.integers(2)) if spec.daytime == "Light" else 1]
    weather = [] if rng.random() < _WEATHER_TAG_MISSING else weather
    alteration: list[str] = []
    if rng.random() < cfg.alteration_rate[lab]:
        on_road = any(o.on_road for o in frames[0].objects)
        pool = (_ALTER_ROAD if on_road else _ALTER_SIDE) if unit.label else _ALTER_NONE
        alteration = sorted(rng.choice(pool, int(rng.integers(1, 3)), replace=False).tolist())
    city = cities[int(rng.integers(len(cities)))]
    gps = _gps_track(cfg, unit, city, rng)
    video = unit.kind == "video"
    vid_id, first_frame = rng.bytes(8).hex(), int(rng.integers(0, 3000))
    date, licence = int(rng.integers(*_EPOCH_RANGE)), int(rng.choice([1, 2, 4]))
    rows = []
    for j, frame in enumerate(frames):
        row = {
            "image": {"bytes": _encode(frame.image, cfg.jpeg_quality), "path": None},
            "id": None,
            "width": spec.width,
            "height": spec.height,
            "license": licence,
            "flickr_url": None,
            "coco_url": None,
            "date_captured": date + 2 * j,
            "gps": gps[j],
            "city_name": city[0],
            "scene_description": text if rng.random() < cfg.description_rate[lab] else None,
            "video_info.frame_id": str(first_frame + 15 * j) if video else None,
            "video_info.seq_id": j,
            "video_info.vid_id": vid_id if video else None,
            "scene_level_tags.daytime": spec.daytime,
            "scene_level_tags.scene_environment": spec.environment,
            "scene_level_tags.travel_alteration": _list_text(alteration, rng),
            "scene_level_tags.weather": _list_text(weather, rng),
            "label": unit.label,
        }
        rows.append(SynthRow(row, frame.objects, frame.distractors))
    return rows


def init_worker() -> None:
    cv2.setNumThreads(1)  # one process per core already: no nested threads


def _render_all(jobs: list, workers: int) -> list[list[SynthRow]]:
    if workers <= 1 or len(jobs) < 2:
        return [render_unit(job) for job in jobs]
    ctx = multiprocessing.get_context("spawn")  # safe whatever thread pools the parent has started
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=init_worker) as pool:
        return list(pool.map(render_unit, jobs, chunksize=2))


def _break_row(rows: list[SynthRow], i: int, split_index: int) -> None:
    """Bad row i, cycling: a truncated JPEG, an invalid label (null or 2), a GPS out of range."""
    row, variant = rows[0].row, i // 3 + split_index  # the next split gets the other variant
    if i % 3 == 0:
        data = row["image"]["bytes"]
        row["image"] = {"bytes": data[: len(data) // 2], "path": None}
    elif i % 3 == 1:
        row["label"] = None if variant % 2 == 0 else 2
    else:
        row["gps"] = _BAD_GPS[variant % len(_BAD_GPS)]


def _duplicates(cfg: SynthConfig, regular: dict[str, list[SynthRow]]) -> dict[str, list[SynthRow]]:
    """Exact byte copies of existing images; the first one copies a train image into the test split."""
    splits = list(regular)
    out: dict[str, list[SynthRow]] = {s: [] for s in splits}
    rng = np.random.default_rng([cfg.seed, _SEED_EXTRA, 1])
    for j in range(cfg.duplicates):
        if j == 0 and len(splits) >= 2:
            dst = TEST_SPLIT if TEST_SPLIT in splits[1:] else splits[1]
            src = "train" if "train" in splits and dst != "train" else splits[0]
        else:
            src = dst = splits[(j - 1) % len(splits)]
        cities = {c[0] for c in split_cities(cfg, dst)}
        # Prefer a single image from a city of the destination, so only the bytes betray the copy.
        single = [r for r in regular[src] if r.row["video_info.vid_id"] is None]
        pool = [r for r in single if r.row["city_name"] in cities] or single or regular[src]
        source = pool[int(rng.integers(len(pool)))]
        out[dst].append(SynthRow(dict(source.row), source.objects, source.distractors))
    return out


def generate(cfg: SynthConfig, workers: int = 1, *, styled: bool = False) -> dict[str, list[SynthRow]]:
    """Every row of every split: regular rows, then bad rows, then duplicates; ids and paths assigned.

    `styled`: the regular rows only, each scene re-drawn in the second style, with the same ids and
    metadata as the rows they re-draw (the generated half of the validator-style challenges).
    """
    plans = {split: plan_split(cfg, split) for split in cfg.rows}
    jobs = [(cfg, u, split_cities(cfg, split), styled) for split, units in plans.items() for u in units]
    for split in cfg.rows if not styled else ():
        for i in range(cfg.bad_rows):
            jobs.append((cfg, bad_unit(cfg, split, i), split_cities(cfg, split), False))
    rendered = _render_all(jobs, workers)
    regular: dict[str, list[SynthRow]] = {split: [] for split in cfg.rows}
    bad: dict[str, list[SynthRow]] = {split: [] for split in cfg.rows}
    for (_, unit, _, _), rows in zip(jobs, rendered, strict=True):
        if unit.index >= _BAD_INDEX:
            _break_row(rows, unit.index - _BAD_INDEX, list(cfg.rows).index(unit.split))
            bad[unit.split].extend(rows)
        else:
            regular[unit.split].extend(rows)
    dups = {split: [] for split in cfg.rows} if styled else _duplicates(cfg, regular)
    out = {}
    for k, split in enumerate(cfg.rows):
        rows = regular[split] + bad[split] + dups[split]
        for pos, r in enumerate(rows):
            r.row["id"] = (k + 1) * _ID_STRIDE + pos
            r.row["image"] = {"bytes": r.row["image"]["bytes"], "path": f"{r.row['id']}.jpg"}
        out[split] = rows
    return out


def write_split(rows: list[SynthRow], data_dir: Path, split: str, n_shards: int) -> list[Path]:
    """Write a split as `n_shards` contiguous parquet shards named like the hub's."""
    data_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, part in enumerate(_shard_rows(rows, n_shards)):
        table = pa.Table.from_pylist([r.row for r in part], schema=SCHEMA)
        path = data_dir / shard_name(split, i, n_shards)
        pq.write_table(table, path, row_group_size=_ROW_GROUP)
        paths.append(path)
    return paths


def _shard_rows(rows: list[SynthRow], n_shards: int) -> list[list[SynthRow]]:
    bounds = np.linspace(0, len(rows), n_shards + 1).round().astype(int)
    return [rows[bounds[i] : bounds[i + 1]] for i in range(n_shards)]


def truth_table(data: dict[str, list[SynthRow]], shards: dict[str, int]) -> pa.Table:
    """One row per written image: its shard (relative to the dataset root, as the index has it), its row
    there and the roadwork objects drawn on it as JSON [{"kind", "polygons"}] in image pixels."""
    out: dict[str, list] = {"shard": [], "row": [], "objects": []}
    for split, rows in data.items():
        for i, part in enumerate(_shard_rows(rows, shards[split])):
            shard = f"{DATA_DIR}/{shard_name(split, i, shards[split])}"
            for row, r in enumerate(part):
                objects = [
                    {
                        "kind": o.kind,
                        "polygons": [[[round(x, 2), round(y, 2)] for x, y in poly] for poly in o.polygons],
                    }
                    for o in r.objects
                ]
                out["shard"].append(shard)
                out["row"].append(row)
                out["objects"].append(json.dumps(objects, separators=(",", ":")))
    return pa.table(
        out, schema=pa.schema([("shard", pa.string()), ("row", pa.int64()), ("objects", pa.string())])
    )


def write_dataset(cfg: SynthConfig, root: str | Path, workers: int = 1) -> dict[str, list[Path]]:
    """Generate the dataset, write its shards under `<root>/data/` and the ground-truth side table
    `<root>/TRUTH_FILE`; returns the shard paths per split."""
    data = generate(cfg, workers)
    data_dir = Path(root) / DATA_DIR
    written = {split: write_split(rows, data_dir, split, cfg.shards[split]) for split, rows in data.items()}
    feather.write_feather(truth_table(data, cfg.shards), Path(root) / TRUTH_FILE)
    return written


def write_generated(cfg: SynthConfig, root: str | Path, workers: int = 1) -> dict[str, list[Path]]:
    """The same scenes re-drawn in the second style, as a NATIX-schema dataset under `<root>/data/`
    (regular rows only, same ids as the rows they re-draw); returns the shard paths per split."""
    data = generate(cfg, workers, styled=True)
    data_dir = Path(root) / DATA_DIR
    return {split: write_split(rows, data_dir, split, cfg.shards[split]) for split, rows in data.items()}
