"""Progress of long work: a tqdm bar on a terminal, one line per few percent elsewhere (CI, `dvc repro`
logs), both with the rate and the time left.

    for batch in progress(loader, total=len(jobs), desc="extract", unit="img", count=len):
        ...

A bar redrawn with carriage returns becomes one endless line in a log file, so when standard error is
not a terminal the same numbers are printed as plain lines, each `every` percent of the total.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TextIO, TypeVar

from tqdm import tqdm

T = TypeVar("T")
LOG_EVERY = 10  # percent of the total between two log lines when the output is not a terminal


def progress(
    items: Iterable[T],
    *,
    total: int | None,
    desc: str,
    unit: str = "it",
    count: Callable[[T], int] | None = None,
    every: int = LOG_EVERY,
    file: TextIO | None = None,
) -> Iterator[T]:
    """`items`, reporting progress on `file` (standard error) in `unit`s out of `total`. `count(item)`
    says how many units an item is (a batch of 8 images: 8), so rates are in the units a person thinks in."""
    out = file or sys.stderr
    size = count or (lambda _: 1)
    if out.isatty():
        with tqdm(total=total, desc=desc, unit=unit, file=out) as bar:
            for item in items:
                yield item
                bar.update(size(item))
        return
    start, done, next_mark = time.perf_counter(), 0, every
    try:
        for item in items:
            yield item
            done += size(item)
            percent = 100 * done / total if total else None
            if percent is not None and percent >= next_mark and done < total:
                _line(out, done, total, time.perf_counter() - start, desc, unit)
                next_mark = (int(percent) // every + 1) * every
    finally:  # also when the caller stops early (early stopping): the last line says where it stopped
        _line(out, done, total, time.perf_counter() - start, desc, unit)


def _line(out: TextIO, done: int, total: int | None, elapsed: float, desc: str, unit: str) -> None:
    """One log line in tqdm's format: percent, count, elapsed < left, rate."""
    print(tqdm.format_meter(done, total, elapsed, ncols=0, prefix=desc, unit=unit), file=out, flush=True)
