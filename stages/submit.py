"""Stage `submit`: the top-k members by validation MCC, refined by DoRA and TTA where they exist.

Writes `submission/submission.csv`, `submission/ensemble.json` (what `roadwork predict` serves),
`submission/scores.json` (every variant scored on the test split with 95 % group-bootstrap intervals)
`metrics/final.json` (the headline numbers `dvc exp show` and `dvc metrics diff` compare) and
`metrics/members.json` (each member's validation MCC, a DVC plot).
"""

from __future__ import annotations

from roadwork.config import load_paths, load_stage_params, section, subset
from roadwork.ensemble import EnsembleConfig, SubmitConfig
from roadwork.ensemble.submit import submit
from roadwork.views.plan import SmallSide


def main() -> None:
    params = load_stage_params("submit")
    paths = load_paths(params)
    config = section(SubmitConfig, params, "submit")
    small_side = subset(SmallSide, params, "views").small_side
    final = submit(paths, section(EnsembleConfig, params, "ensemble"), config, small_side)
    served = final["served"]["test"] or final["val"]
    print(
        f"submit: serving {final['served']['members']} ({config.use}, chosen for the {config.target} "
        f"target): test MCC {served['mcc']:.3f} [{served['mcc_lo']:.3f}, {served['mcc_hi']:.3f}] "
        f"-> {paths.submission}/submission.csv"
    )
    for name, route in final["routes"].items():
        scores = ", ".join(f"{p} {s['mcc']:.3f}" for p, s in route["val_challenges"].items())
        print(f"submit: route {name}: {route['served']}, validation challenges MCC {scores}")
    print(f"submit: the NATIX choice {final['chosen']} (by validation MCC with metadata), by variant:")
    for name, scores in final["variants"].items():
        if scores:
            print(f"  {name:<18} MCC {scores['mcc']:.3f} [{scores['mcc_lo']:.3f}, {scores['mcc_hi']:.3f}]")


if __name__ == "__main__":
    main()
