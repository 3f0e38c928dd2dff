"""Stage `submit`: the top-k members by validation MCC, refined by DoRA and TTA where they exist.

Writes `submission/submission.csv`, `submission/ensemble.json` (what `roadwork predict` serves),
`submission/scores.json` (every variant scored on the test split with 95 % group-bootstrap intervals)
`metrics/final.json` (the headline numbers `dvc exp show` and `dvc metrics diff` compare) and
`metrics/members.json` (each member's validation MCC, a DVC plot).
"""

from __future__ import annotations

from roadwork.config import load_paths, load_stage_params, section
from roadwork.ensemble import EnsembleConfig, SubmitConfig
from roadwork.ensemble.submit import submit


def main() -> None:
    params = load_stage_params("submit")
    paths = load_paths(params)
    config = section(SubmitConfig, params, "submit")
    final = submit(paths, section(EnsembleConfig, params, "ensemble"), config)
    headline = final["test"] or final["val"]
    print(
        f"submit: members {final['chosen']}, {config.use}: test MCC {headline['mcc']:.3f} "
        f"[{headline['mcc_lo']:.3f}, {headline['mcc_hi']:.3f}] -> {paths.submission}/submission.csv"
    )
    for name, scores in final["variants"].items():
        if scores:
            print(f"  {name:<18} MCC {scores['mcc']:.3f} [{scores['mcc_lo']:.3f}, {scores['mcc_hi']:.3f}]")


if __name__ == "__main__":
    main()
