"""The served model scored as a StreetVision validator scores a miner (shared VALIDATOR.md).

Each test challenge (a JPEG of one protocol: a 224 px crop or letterbox of level 0-3, or the image at
its own size; no metadata) is answered one image per call as a validator queries (the served model:
`roadwork predict`'s own code, `Predictor.probability`); the answer is rounded at 0.5 (exactly 0.5 is
"no roadwork"). Scored per protocol, and within it overall, per domain (real / generated), per level
and per (domain, level): MCC floored at 0, accuracy and the reward `(0.5 MCC + 0.5 accuracy)^3`, each
with a 95 % bootstrap interval over the source images' groups (a video's frames are resampled
together); and the answer latency per protocol.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from roadwork.metrics import validator_metrics
from roadwork.views.challenges import read_table

NO_LEVEL = "-"  # the level of a `native` challenge: none


def answer_challenges(answer: Callable[[bytes], float], challenge_dir: Path) -> pl.DataFrame:
    """The test challenges with the answer (`prob`: `answer` of the JPEG bytes, one image per call) and
    the seconds each answer took. A challenge that cannot be answered is a defect: it raises, naming
    the file."""
    table = read_table(challenge_dir, "test")
    probs, seconds = [], []
    for file in table["file"]:
        data = (Path(challenge_dir) / file).read_bytes()
        start = time.perf_counter()
        try:
            probs.append(float(answer(data)))
        except (OSError, ValueError) as e:
            raise ValueError(f"{challenge_dir / file}: {e}") from e
        seconds.append(time.perf_counter() - start)
    return table.with_columns(prob=pl.Series(probs, dtype=pl.Float64), seconds=pl.Series(seconds))


def _scores(frame: pl.DataFrame, n: int) -> dict[str, Any]:
    return validator_metrics(
        frame["label"].to_numpy(), frame["prob"].to_numpy(), n=n, groups=frame["group"].to_numpy()
    )


def _grouped(frame: pl.DataFrame, keys: list[str], n: int) -> dict[str, dict[str, Any]]:
    """Scores per value of `keys` (joined by "/"), in sorted order."""
    groups = sorted(frame.group_by(keys), key=lambda g: tuple(str(v) for v in g[0]))
    return {"/".join(str(v) for v in key): _scores(part, n) for key, part in groups}


def protocol_scores(answers: pl.DataFrame, bootstrap: int) -> dict[str, Any]:
    """One protocol's answers: overall, per domain, per level and per (domain, level)."""
    answers = answers.with_columns(pl.col("level").cast(pl.String).fill_null(NO_LEVEL))
    return {
        "all": _scores(answers, bootstrap),
        "domains": _grouped(answers, ["domain"], bootstrap),
        "levels": _grouped(answers, ["level"], bootstrap),
        "cells": _grouped(answers, ["domain", "level"], bootstrap),
    }


def score_answers(answers: pl.DataFrame, bootstrap: int) -> dict[str, Any]:
    """Scores per protocol (in the answers' order of protocols)."""
    protocols = answers["protocol"].unique(maintain_order=True).to_list()
    out = {p: protocol_scores(answers.filter(pl.col("protocol") == p), bootstrap) for p in protocols}
    return {"protocols": out, "generated_half": bool((answers["domain"] == "generated").any())}


def latency(answers: pl.DataFrame) -> dict[str, Any]:
    """Answer latency percentiles in milliseconds (one image per call), per protocol and overall."""

    def percentiles(seconds: np.ndarray) -> dict[str, float]:
        ms = 1000 * seconds
        return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "n": len(ms)}

    per = {
        p: percentiles(f["seconds"].to_numpy())
        for (p,), f in answers.group_by("protocol", maintain_order=True)
    }
    return percentiles(answers["seconds"].to_numpy()) | {"protocols": per}


def headline(details: dict[str, Any]) -> dict[str, Any]:
    """What `dvc exp show` compares: the validator MCC averaged over the protocols (`v_mcc`), the worst
    protocol's (`v_worst`), the real and generated halves' averaged over the protocols (`v_real`,
    `v_gen`; None without a generated half) and the mean reward (`v_reward`). The `v_` prefix keeps the
    names apart from `final.json`'s; everything per protocol, domain and level is in `details.json`."""
    blocks = list(details["protocols"].values())

    def mean(values: list[float]) -> float | None:
        return round(float(np.mean(values)), 4) if values else None

    return {
        "v_mcc": mean([b["all"]["mcc"] for b in blocks]),
        "v_worst": round(min(b["all"]["mcc"] for b in blocks), 4),
        "v_real": mean([b["domains"]["real"]["mcc"] for b in blocks if "real" in b["domains"]]),
        "v_gen": mean([b["domains"]["generated"]["mcc"] for b in blocks if "generated" in b["domains"]]),
        "v_reward": mean([b["all"]["reward"] for b in blocks]),
    }


def level_rows(details: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (protocol, domain, level): the DVC plot of MCC by protocol and level."""
    rows = []
    for protocol, block in details["protocols"].items():
        for key, scores in block["cells"].items():
            domain, level = key.split("/")
            rows.append(
                {"level": f"{protocol} {domain} {level}", "mcc": round(scores["mcc"], 4), "n": scores["n"]}
            )
    return rows
