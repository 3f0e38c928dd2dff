"""The served model scored as a StreetVision validator scores a miner (shared VALIDATOR.md).

Each test challenge (224 px JPEG, level 0-3, no metadata) is answered one image per call as a validator
queries (the served model: `roadwork predict`'s own code, `Predictor.probability`); the answer is
rounded at 0.5 (exactly 0.5 is "no roadwork"). Scored overall, per domain (real / generated) and per
level: MCC floored at 0, accuracy and the reward `(0.5 MCC + 0.5 accuracy)^3`, each with a 95 %
bootstrap interval over the source images' groups (a video's frames are resampled together); and the
answer latency.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from roadwork.metrics import validator_metrics
from roadwork.views.challenges import TABLE_FILE


def answer_challenges(answer: Callable[[bytes], float], challenge_dir: Path) -> pl.DataFrame:
    """The test challenges with the answer (`prob`: `answer` of the JPEG bytes, one image per call) and
    the seconds each answer took. A challenge that cannot be answered is a defect: it raises, naming
    the file."""
    table = pl.read_parquet(Path(challenge_dir) / TABLE_FILE).filter(pl.col("part") == "test")
    probs, seconds = [], []
    for file in table["file"]:
        data = (Path(challenge_dir) / file).read_bytes()
        start = time.perf_counter()
        try:
            probs.append(float(answer(data)))
        except (OSError, ValueError) as e:
            raise ValueError(f"{challenge_dir / file}: {e}") from e
        seconds.append(time.perf_counter() - start)
    return table.with_columns(prob=pl.Series(probs), seconds=pl.Series(seconds))


def _scores(frame: pl.DataFrame, n: int) -> dict[str, Any]:
    return validator_metrics(
        frame["label"].to_numpy(), frame["prob"].to_numpy(), n=n, groups=frame["group"].to_numpy()
    )


def score_answers(answers: pl.DataFrame, bootstrap: int) -> dict[str, Any]:
    """Overall, per domain, per level and per (domain, level) scores."""
    out: dict[str, Any] = {"all": _scores(answers, bootstrap), "domains": {}, "levels": {}, "cells": {}}
    for (domain,), frame in answers.group_by("domain", maintain_order=True):
        out["domains"][domain] = _scores(frame, bootstrap)
    for (level,), frame in sorted(answers.group_by("level"), key=lambda g: g[0]):
        out["levels"][str(level)] = _scores(frame, bootstrap)
    for (domain, level), frame in sorted(answers.group_by("domain", "level"), key=lambda g: g[0]):
        out["cells"][f"{domain}/{level}"] = _scores(frame, bootstrap)
    out["generated_half"] = "generated" in out["domains"]
    return out


def latency(answers: pl.DataFrame) -> dict[str, float]:
    """Answer latency percentiles in milliseconds (one image per call), and the challenges timed."""
    ms = 1000 * answers["seconds"].to_numpy()
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "n": len(ms)}


def headline(details: dict[str, Any]) -> dict[str, Any]:
    """What `dvc exp show` compares: the validator-mode MCC and reward over all test challenges. The
    `v_` prefix keeps the names apart from `final.json`'s (DVC would prefix both with their file path)
    and the columns narrow; per domain and level they are in `details.json` and the levels plot."""
    return {"v_mcc": round(details["all"]["mcc"], 4), "v_reward": round(details["all"]["reward"], 4)}


def level_rows(details: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (domain, level): the DVC plot of MCC by level."""
    rows = []
    for key, scores in details["cells"].items():
        domain, level = key.split("/")
        rows.append({"level": f"{domain} {level}", "mcc": round(scores["mcc"], 4), "n": scores["n"]})
    return rows
