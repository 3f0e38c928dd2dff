"""Progress output: a tqdm bar on a terminal, plain lines every few percent elsewhere."""

from __future__ import annotations

import io

from roadwork.progress import progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_mode_prints_a_line_per_step_with_rate_and_the_final_count():
    out = io.StringIO()
    items = list(progress([[0] * 4] * 25, total=100, desc="extract", unit="img", count=len, file=out))
    assert len(items) == 25
    lines = out.getvalue().splitlines()
    assert len(lines) == 10  # 10 %, 20 %, ... 90 % and the final 100 %
    assert lines[0].startswith("extract:  12% 12/100") and "img/s" in lines[0]
    assert lines[-1].startswith("extract: 100% 100/100") and "\r" not in out.getvalue()


def test_log_mode_reports_where_an_early_stop_left_off():
    out = io.StringIO()
    for epoch in progress(range(30), total=30, desc="epochs", unit="epoch", file=out):
        if epoch == 6:
            break
    assert out.getvalue().splitlines()[-1].startswith("epochs:  20% 6/30")  # completed ones, as tqdm counts


def test_terminal_mode_draws_a_tqdm_bar():
    out = Terminal()
    assert list(progress(range(5), total=5, desc="masks", unit="img", file=out)) == list(range(5))
    text = out.getvalue()
    assert "\r" in text and "masks: 100%" in text and "5/5" in text
