"""Cross-fitting a member: one model per fold of the labelled train split, served as their mean.

A plain member keeps the validation rows (a fifth of the labelled train split) out of training. A
cross-fitted member (`train.crossfit: true`) trains one model per fold of the same grouped split
(`grouped_folds`, whose fold 0 holds out exactly the validation rows), each early-stopped on the fold
it holds out, and serves the mean of their log-odds: every labelled row reaches training. The
validation rows are still predicted by fold 0's model, which never saw them (the model the plain
member would be, same seed), and any row of the labelled train split is predicted by the model that
held it out (`FoldMean` reads the batch's `fold`), so choosing members and calibrating on validation
rows or on their challenges stays out of sample. Measured in docs/decisions.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import polars as pl
from torch import nn

from roadwork.models.folds import FoldMean
from roadwork.progress import progress
from roadwork.train.config import TrainConfig
from roadwork.train.data import Table, TrainInputs, Vocab, prepare_folds, prepare_tables
from roadwork.train.loop import TrainResult
from roadwork.train.member import fit_member


@dataclass
class Trained:
    """A trained member: the model it serves, and what trained it."""

    model: nn.Module  # the model, or a cross-fitted member's `FoldMean`
    spec: dict[str, Any]  # what `roadwork.models.build_model` builds one (fold) model from
    result: TrainResult  # the run early-stopped on the validation rows (a cross-fitted member's fold 0)
    tables: dict[str, Table]  # train / val / test (fold 0's parts for a cross-fitted member)
    vocab: Vocab
    fold_results: list[TrainResult] = field(default_factory=list)  # cross-fitted: every fold's run
    heldout: dict[str, int] = field(default_factory=dict)  # cross-fitted: image_id -> fold holding it out


def cross_fit_member(
    *,
    config: TrainConfig,
    folds: list[dict[str, Table]],
    vocab: Vocab,
    log: Callable[[dict], None] | None = None,
) -> Trained:
    """Train one model per fold (`prepare_folds`); fold k's seed is `config.seed + k`, so fold 0 is the
    plain member. `log` receives fold 0's epochs (its validation rows are every member's)."""
    models, results, heldout, spec = [], [], {}, {}
    for k, tables in enumerate(progress(folds, total=len(folds), desc="folds", unit="fold")):
        recipe = dataclasses.replace(config, seed=config.seed + k)
        fold_log = log if k == 0 else None
        model, spec, result = fit_member(config=recipe, tables=tables, vocab=vocab, log=fold_log)
        models.append(model.eval())
        results.append(result)
        heldout.update(dict.fromkeys(tables["val"].image_id, k))
    return Trained(FoldMean(models), spec, results[0], folds[0], vocab, results, heldout)


def train_member(
    index: pl.DataFrame,
    *,
    config: TrainConfig,
    inputs: TrainInputs,
    log: Callable[[dict], None] | None = None,
) -> Trained:
    """Load a member's Tables from the caches and train it: one model, or one per fold when
    `config.crossfit`."""
    if config.crossfit:
        folds, vocab = prepare_folds(index, inputs=inputs, config=config)
        return cross_fit_member(config=config, folds=folds, vocab=vocab, log=log)
    tables, vocab = prepare_tables(index, inputs=inputs, config=config)
    model, spec, result = fit_member(config=config, tables=tables, vocab=vocab, log=log)
    return Trained(model, spec, result, tables, vocab)
