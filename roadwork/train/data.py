"""Cached features + metadata as in-memory arrays, the grouped validation split, and batches.

Everything a head needs for a row lives in a `Table` of numpy arrays (features stay float16 until a
batch is drawn), so an epoch is pure indexing: no file I/O, no backbone.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from roadwork.config import load_paths, subset
from roadwork.data.gps import read_weights
from roadwork.features.cache import TOKENS, CacheKey, FeatureCache, open_features
from roadwork.features.text import DIM as TEXT_DIM
from roadwork.features.text import read_text
from roadwork.generate.run import read_generated
from roadwork.masks.cache import MaskCache, open_masks
from roadwork.masks.config import MaskKey
from roadwork.predictions import predictions_frame
from roadwork.train.config import TOKEN_SETS, TrainConfig

CATEGORICAL = ("weather", "daytime", "scene_environment")
NULL = "<null>"  # index 0 of every vocabulary: a learnable "unknown", never a zero vector


@dataclass
class Vocab:
    """Category -> index per categorical field; index 0 is NULL. Built on training rows only."""

    values: dict[str, list[str]]

    @classmethod
    def fit(cls, rows: pl.DataFrame) -> Vocab:
        return cls(
            {name: [NULL, *sorted({v for v in _first(rows[name]) if v is not None})] for name in CATEGORICAL}
        )

    def encode(self, name: str, column: pl.Series) -> np.ndarray:
        """Indices; values unseen in training map to NULL."""
        position = {v: k for k, v in enumerate(self.values[name])}
        return np.array([position.get(v, 0) if v is not None else 0 for v in _first(column)], dtype=np.int64)

    def sizes(self) -> dict[str, int]:
        return {name: len(v) for name, v in self.values.items()}


def _first(column: pl.Series) -> list[str | None]:
    """List columns (weather) use their first tag; string columns pass through."""
    if column.dtype == pl.List(pl.String):
        return [v[0] if v else None for v in column.to_list()]
    return column.to_list()


@dataclass
class Table:
    """Rows of one split part (train / val / test), aligned arrays."""

    image_id: list[str]
    features: np.ndarray  # [n, C, V, D] float16
    copies: np.ndarray  # [n] valid augmentation copies per row
    label: np.ndarray  # [n] int64, -1 where unlabelled
    meta: dict[str, np.ndarray] = field(default_factory=dict)  # per-row metadata arrays
    group: list[str] = field(default_factory=list)
    weight: np.ndarray | None = None  # [n] GPS sampling weight (train rows)
    near: np.ndarray | None = None  # [n] bool: within near_km of a test cluster
    first_bracket: np.ndarray | None = None  # [n] bool: in the first GPS bracket (strongest weight)
    masks: np.ndarray | None = None  # [n, V, P, G, G] float16: SAM 3 pseudo-masks per view and prompt
    challenge_copies: int = 0  # the last copies of a full row are validator-style (224 px, no metadata)
    fold: np.ndarray | None = None  # [n] the fold that held each row out (a cross-fitted member); -1: none
    generated: np.ndarray | None = None  # [n] bool: a generated image (the `generate` stage's), not a photo
    mask_valid: np.ndarray | None = None  # [n] bool: the row has pseudo-masks (generated images have none)

    def __len__(self) -> int:
        return len(self.image_id)

    def take(self, idx: np.ndarray) -> Table:
        """The rows `idx` as a new Table (every per-row field indexed, whatever fields it has)."""
        idx = np.asarray(idx, dtype=np.int64)
        values = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, np.ndarray):
                value = value[idx]
            elif isinstance(value, list):
                value = [value[i] for i in idx] if value else []
            elif isinstance(value, dict):
                value = {k: v[idx] for k, v in value.items()}
            values[f.name] = value
        return Table(**values)

    def without_metadata(self) -> Table:
        """These rows as images that arrive without metadata (a file, a validator's query): every
        metadata input NULL, the views unchanged."""
        every = np.ones(len(self), bool)
        return dataclasses.replace(self, meta={k: null_where(k, v, every) for k, v in self.meta.items()})

    def predictions(self, split: str, logit: np.ndarray) -> pl.DataFrame:
        """The prediction frame (`roadwork.predictions`) of these rows for their `logit`s."""
        return predictions_frame(
            image_id=self.image_id, split=split, label=self.label, group=self.group, logit=logit
        )

    def batch(
        self,
        idx: np.ndarray,
        rng: np.random.Generator | None = None,
        *,
        challenge_rate: float = 0.0,
        meta_dropout: float = 0.0,
    ) -> dict[str, torch.Tensor]:
        """Tensors for rows `idx`: copy 0 (clean) without `rng`. With `rng`: a row that has
        validator-style copies takes one of them whole with probability `challenge_rate`, its metadata
        NULL (a validator sends none); every other row draws one clean-or-augmented copy per view, its
        metadata NULL with probability `meta_dropout`."""
        n, n_views = len(idx), self.features.shape[2]
        if rng is None:
            views, null_meta = self.features[idx, 0], np.zeros(n, bool)
        else:
            challenges = np.where(self.copies[idx] > 1, self.challenge_copies, 0)
            plain = self.copies[idx] - challenges  # clean + augmented copies of each row
            choice = (rng.random((n, n_views)) * plain[:, None]).astype(np.int64)
            whole = (challenges > 0) & (rng.random(n) < challenge_rate)
            picked = plain + (rng.random(n) * np.maximum(challenges, 1)).astype(np.int64)
            choice[whole] = picked[whole, None]
            views = self.features[idx[:, None], choice, np.arange(n_views)[None, :]]
            null_meta = whole | (rng.random(n) < meta_dropout)
        out = {
            "views": torch.from_numpy(views.astype(np.float32)),
            "label": torch.from_numpy(self.label[idx]),
        }
        out.update({k: torch.from_numpy(null_where(k, v[idx], null_meta)) for k, v in self.meta.items()})
        if "weather" in self.meta:  # the auxiliary target: the tag describes the pixels, dropped input or not
            out["weather_target"] = torch.from_numpy(self.meta["weather"][idx])
        if self.fold is not None:  # a cross-fitted member predicts a row with the model that held it out
            out["fold"] = torch.from_numpy(self.fold[idx])
        if self.masks is not None:
            out["masks"] = torch.from_numpy(self.masks[idx].astype(np.float32))
            valid = np.ones(len(idx), bool) if self.mask_valid is None else self.mask_valid[idx]
            out["mask_valid"] = torch.from_numpy(valid)
        return out


def null_where(name: str, values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Metadata array `name` with the `rows` (bool) set to what an image without metadata gets: no GPS,
    the NULL category (index 0), no text. A copy when anything changes."""
    if not rows.any():
        return values
    out = values.copy()
    out[rows] = 0  # zeros, False and the NULL index alike
    return out


def view_features(tokens: np.ndarray, config: TrainConfig) -> np.ndarray:
    """A member's view features `[n, V', T*D]` from all pooled tokens `[n, V, 3, D]` (cache order
    `TOKENS`): its token set concatenated as `FeatureCache.read` serves it, its views."""
    picked = tokens[:, :, [TOKENS.index(t) for t in TOKEN_SETS[config.tokens]]]
    features = picked.reshape(*picked.shape[:2], -1)
    return features[:, [0]] if config.views == "global" else features


def grouped_folds(rows: pl.DataFrame, fraction: float, seed: int) -> list[tuple[pl.DataFrame, pl.DataFrame]]:
    """The rows dealt into about 1 / `fraction` folds, whole groups (videos / GPS cells) at a time,
    stratified by label: (training rows, held-out rows) per fold, fold 0 first.

    With fewer groups than 1 / `fraction`, one fold per group (a larger share, never zero rows).
    """
    n_groups = rows["group"].n_unique()
    if n_groups < 2:
        raise ValueError(f"no validation part to hold out: {len(rows)} row(s) form {n_groups} group(s)")
    # Imported here: sklearn costs ~1.3 s at import, paid otherwise by every stage that loads a head.
    from sklearn.model_selection import StratifiedGroupKFold

    folds = min(max(2, round(1.0 / fraction)), n_groups)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    split = splitter.split(np.zeros(len(rows)), rows["label"].to_numpy(), rows["group"].to_numpy())
    return [(rows[np.sort(fit)], rows[np.sort(held)]) for fit, held in split]


def split_train_val(rows: pl.DataFrame, fraction: float, seed: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Hold out about `fraction` of the rows, whole groups at a time, stratified: fold 0 of
    `grouped_folds`."""
    return grouped_folds(rows, fraction, seed)[0]


def labelled_train_rows(index: pl.DataFrame) -> pl.DataFrame:
    """The labelled rows of the train split: what members fit and validate on."""
    labelled = index.filter((pl.col("split") == "train") & pl.col("label").is_not_null())
    if labelled.is_empty():
        raise ValueError("the index has no labelled train rows")
    return labelled


@dataclass(frozen=True)
class ValidationSplit:
    """The keys of `train:` that cut the validation rows every member holds out."""

    val_fraction: float  # of the labelled train split, grouped by video / GPS cell
    split_seed: int  # shared by all members, so their validation MCCs compare


def train_val_rows(index: pl.DataFrame, fraction: float, seed: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The labelled train split cut into the rows heads fit on and the validation rows every member
    holds out (`train.val_fraction`, `train.split_seed`: shared, so validation MCCs compare)."""
    return split_train_val(labelled_train_rows(index), fraction, seed)


def metadata_arrays(
    rows: pl.DataFrame, vocab: Vocab, text: tuple[np.ndarray, np.ndarray]
) -> dict[str, np.ndarray]:
    """Model inputs besides the views: GPS (+ mask), categorical indices, text embedding (+ mask)."""
    lat = rows["lat"].to_numpy().astype(np.float32)
    lon = rows["lon"].to_numpy().astype(np.float32)
    has_gps = ~(np.isnan(lat) | np.isnan(lon))
    embedding, mask = text
    return {
        "lat": np.where(has_gps, lat, 0.0).astype(np.float32),
        "lon": np.where(has_gps, lon, 0.0).astype(np.float32),
        "gps_mask": has_gps,
        "weather": vocab.encode("weather", rows["weather"]),
        "daytime": vocab.encode("daytime", rows["daytime"]),
        "scene": vocab.encode("scene_environment", rows["scene_environment"]),
        "text": embedding.astype(np.float32),
        "text_mask": mask.astype(bool),
    }


@dataclass(frozen=True)
class TrainInputs:
    """What a member reads besides the index: the caches and the GPS statistics (`open_inputs`)."""

    cache: FeatureCache  # the backbone's pooled tokens per image, copy and view
    text_path: Path  # the MiniLM text cache
    gps: pl.DataFrame | None = None  # per-row sampling weight and distance (`gps` stage); None: none
    near_km: float = 100.0  # radius of the "near a test cluster" statistic
    first_bracket_km: float = 50.0  # the first GPS bracket (the strongest weight)
    masks: MaskCache | None = None  # SAM 3 pseudo-masks: the full head's Dice target; None: none
    generated: pl.DataFrame | None = None  # generated training rows (index columns + source_image_id)

    def table(self, rows: pl.DataFrame, *, vocab: Vocab, config: TrainConfig, train: bool) -> Table:
        """`load_table` of `rows` from these inputs; GPS and masks only for `train` rows (a training
        statistic and a training target)."""
        return load_table(
            rows,
            cache=self.cache,
            text=self.text(rows),
            vocab=vocab,
            config=config,
            gps=self.gps if train else None,
            near_km=self.near_km,
            first_bracket_km=self.first_bracket_km,
            masks=self.masks if train else None,
        )

    def text(self, rows: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """The rows' description embeddings and mask; a generated image has none (no metadata, as a
        validator's generated queries)."""
        real = ~generated_flags(rows)
        embedding, mask = np.zeros((len(rows), TEXT_DIM), np.float32), np.zeros(len(rows), bool)
        if real.any():
            embedding[real], mask[real] = read_text(self.text_path, rows["image_id"].filter(real).to_list())
        return embedding, mask


def generated_flags(rows: pl.DataFrame) -> np.ndarray:
    """[n] bool: the rows that are generated images (`with_generated`); none without the column."""
    return (
        rows["generated"].to_numpy().astype(bool)
        if "generated" in rows.columns
        else np.zeros(len(rows), bool)
    )


def open_inputs(params: dict[str, Any], *, masks: bool) -> TrainInputs:
    """A member's inputs from its share of the configuration (`paths`, `extract`'s cache key, `gps`'s
    radii and, with `masks`, the mask cache's key)."""
    paths = load_paths(params)
    gps = params["gps"]
    return TrainInputs(
        cache=open_features(paths, subset(CacheKey, params, "extract")),
        text_path=Path(paths.text),
        gps=read_weights(Path(paths.gps)),
        near_km=float(gps["near_km"]),
        first_bracket_km=float(gps["brackets_km"][0]),
        masks=open_masks(paths, subset(MaskKey, params, "masks")) if masks else None,
        generated=read_generated(Path(paths.generated_train)),
    )


def load_table(
    rows: pl.DataFrame,
    *,
    cache: FeatureCache,
    text: tuple[np.ndarray, np.ndarray],
    vocab: Vocab,
    config: TrainConfig,
    gps: pl.DataFrame | None = None,
    near_km: float = 100.0,
    first_bracket_km: float = 50.0,
    masks: MaskCache | None = None,
) -> Table:
    """Assemble a Table for `rows` (index rows) from the caches."""
    ids = rows["image_id"].to_list()
    views = [0] if config.views == "global" else None
    features, copies = cache.read(ids, TOKEN_SETS[config.tokens], views)
    if not config.aug:
        copies = np.ones_like(copies)
    label = rows["label"].fill_null(-1).to_numpy().astype(np.int64)
    table = Table(ids, features, copies, label, metadata_arrays(rows, vocab, text), rows["group"].to_list())
    table.challenge_copies = cache.challenge_copies if config.aug else 0
    table.generated = generated_flags(rows)
    real = ~table.generated
    if masks is not None and real.any():  # pseudo-masks exist for the dataset's images only
        found = masks.read([i for i, r in zip(ids, real, strict=True) if r])["view_masks"]
        view_masks = np.zeros((len(ids), *found.shape[1:]), found.dtype)
        view_masks[real] = found
        table.masks, table.mask_valid = (view_masks if views is None else view_masks[:, views]), real
    if gps is not None:
        joined = rows.select("image_id").join(gps, on="image_id", how="left", maintain_order="left")
        table.weight = joined["weight"].fill_null(1.0).to_numpy().astype(np.float64)
        dist = joined["dist_km"].fill_nan(None).fill_null(np.inf).to_numpy()
        table.near = dist < near_km
        table.first_bracket = dist < first_bracket_km
    return table


def with_generated(rows: pl.DataFrame, generated: pl.DataFrame | None, config: TrainConfig) -> pl.DataFrame:
    """Training `rows` and the generated images drawn from them (never from a held-out row: a generated
    image goes where its source goes); with `generated` (bool) marking which is which."""
    rows = rows.with_columns(generated=pl.lit(False))
    if generated is None or config.generated_share == 0:
        return rows
    mine = generated.filter(pl.col("source_image_id").is_in(rows["image_id"].implode()))
    return pl.concat([rows, mine.with_columns(generated=pl.lit(True))], how="diagonal_relaxed").select(
        rows.columns
    )


def prepare_tables(
    index: pl.DataFrame, *, inputs: TrainInputs, config: TrainConfig
) -> tuple[dict[str, Table], Vocab]:
    """train / val (from the labelled train split, grouped) and test Tables, and the training vocabulary."""
    fit, val = train_val_rows(index, config.val_fraction, config.split_seed)
    vocab = Vocab.fit(fit)
    fit = with_generated(fit, inputs.generated, config)
    parts = {"train": fit, "val": val, "test": index.filter(pl.col("split") == "test")}
    tables = {
        name: inputs.table(rows, vocab=vocab, config=config, train=name == "train")
        for name, rows in parts.items()
    }
    return tables, vocab


def prepare_folds(
    index: pl.DataFrame, *, inputs: TrainInputs, config: TrainConfig
) -> tuple[list[dict[str, Table]], Vocab]:
    """train / val / test Tables for every fold of the labelled train split (`grouped_folds`; fold 0's
    held-out rows are the validation rows every member holds out), and one vocabulary for all folds:
    fold 0's training rows' (the plain member's), so that fold 0 is exactly the plain member."""
    labelled = labelled_train_rows(index)
    split = grouped_folds(labelled, config.val_fraction, config.split_seed)
    vocab = Vocab.fit(split[0][0])
    pool_rows = with_generated(labelled, inputs.generated, config)
    pool = inputs.table(pool_rows, vocab=vocab, config=config, train=True)
    test = inputs.table(index.filter(pl.col("split") == "test"), vocab=vocab, config=config, train=False)
    position = {image_id: k for k, image_id in enumerate(pool.image_id)}
    folds = []
    for k, (fit, held) in enumerate(split):
        fit = with_generated(fit, inputs.generated, config)  # generated images of this fold's sources only
        fit_idx, held_idx = ([position[i] for i in rows["image_id"]] for rows in (fit, held))
        val = pool.take(held_idx)
        val.fold = np.full(len(val), k, dtype=np.int64)  # the fold models ignore it; `FoldMean` reads it
        folds.append({"train": pool.take(fit_idx), "val": val, "test": test})
    return folds, vocab


def null_metadata(n: int) -> pl.DataFrame:
    """Index-schema metadata columns, all NULL (images that arrive without any)."""
    return pl.DataFrame(
        {
            "lat": [None] * n,
            "lon": [None] * n,
            "weather": [[] for _ in range(n)],
            "daytime": [None] * n,
            "scene_environment": [None] * n,
            "scene_description": [None] * n,
        },
        schema={
            "lat": pl.Float64,
            "lon": pl.Float64,
            "weather": pl.List(pl.String),
            "daytime": pl.String,
            "scene_environment": pl.String,
            "scene_description": pl.String,
        },
    )
