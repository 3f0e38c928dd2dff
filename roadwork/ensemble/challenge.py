"""Members on the validation challenges: what a validator would see of them, for choosing in
`submit.target: validator` mode.

The `challenge_tokens` stage embeds each validation challenge exactly as `roadwork predict` embeds an
image (`features.extract.image_features`); each member answers from those tokens with NULL metadata, as
a validator sends none. The frames have the prediction-frame columns, `image_id` being the challenge
file, and its `protocol`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from roadwork.features.text import DIM as TEXT_DIM
from roadwork.predictions import predictions_frame
from roadwork.train.checkpoint import load_head
from roadwork.train.data import metadata_arrays, null_metadata
from roadwork.views.challenges import read_table

VAL_TOKENS = "val.npy"  # the validation challenges' pooled tokens [n, V, 3, D], in table order


def read_val_challenges(challenge_dir: Path, tokens_dir: Path) -> tuple[pl.DataFrame, np.ndarray]:
    """The validation challenges' rows and their embedded tokens `[n, V, 3, D]`, in the same order."""
    table = read_table(challenge_dir, "val")
    path = Path(tokens_dir) / VAL_TOKENS
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the validation challenges are not embedded; run `dvc repro`")
    tokens = np.load(path)
    if len(tokens) != len(table):
        raise ValueError(
            f"{path}: {len(tokens)} embedded challenges for {len(table)} rows of {challenge_dir}"
        )
    return table, tokens


def challenge_frames(
    heads_dir: Path, members: list[str], table: pl.DataFrame, tokens: np.ndarray
) -> dict[str, pl.DataFrame]:
    """Each member's prediction frame on the validation challenges (no metadata)."""
    n = len(table)
    text = (np.zeros((n, TEXT_DIM), np.float32), np.zeros(n, bool))  # no description
    frames = {}
    for name in members:
        head = load_head(Path(heads_dir) / name)
        meta = metadata_arrays(null_metadata(n), head.vocab, text)
        # a validation challenge is cut from (or re-draws) a validation row: a cross-fitted member
        # answers it with fold 0, the model that held the validation rows out
        logit = head.logits(tokens, meta, folds=np.zeros(n, np.int64))
        frame = predictions_frame(
            image_id=table["file"].to_list(),
            split="val",
            label=table["label"].to_numpy(),
            group=table["group"].to_list(),
            logit=logit,
        )
        frames[name] = frame.with_columns(protocol=table["protocol"])
    return frames
