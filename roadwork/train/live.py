"""dvclive logging of one member's training: per-epoch metrics, the summary, and the ROC,
precision-recall and confusion plots `dvc plots diff` compares across experiments."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
from dvclive import Live


class MemberLive:
    """A dvclive run in `<live>/<member>/`; use as a context manager."""

    def __init__(self, live_dir: Path):
        self.live = Live(str(live_dir), dvcyaml=None, save_dvc_exp=False, report=None)

    def __enter__(self) -> MemberLive:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.__exit__(*exc)

    def step(self, record: dict[str, float]) -> None:
        """One epoch's metrics (the `log` callback of `train_with_model`)."""
        for key, value in record.items():
            if key != "epoch":
                self.live.log_metric(key, value)
        self.live.next_step()

    def finish(
        self, summary: dict[str, Any], labelled: dict[str, pl.DataFrame], params: dict[str, Any]
    ) -> None:
        """Params, the summary metrics and, per labelled part, ROC / PR / confusion plots."""
        self.live.log_params(params)
        for part, frame in labelled.items():
            y, prob = frame["label"].to_numpy(), frame["prob"].to_numpy()
            self.live.log_sklearn_plot("roc", y, prob, name=f"roc/{part}.json")
            self.live.log_sklearn_plot("precision_recall", y, prob, name=f"precision_recall/{part}.json")
            self.live.log_sklearn_plot(
                "confusion_matrix", y, (prob > 0.5).astype(int), name=f"confusion/{part}.json"
            )
        self.live.summary.update(summary)
