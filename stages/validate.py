"""Stage `validate`: the served model on the test challenges of every protocol, as a StreetVision
validator scores it.

Writes `metrics/validator.json` (the DVC metric: `v_mcc` averaged over the protocols, the worst protocol
`v_worst`, the real and generated halves `v_real`, `v_gen`, the reward `v_reward`),
`<paths.validation>/details.json` (per protocol: overall, per domain, per level, per (domain, level),
each with 95 % intervals), `answers.parquet` (every challenge's answer), `metrics/validator_levels.json`
(the DVC plot of MCC per protocol, domain and level) and `metrics/validator_latency.json` (answer
latency p50 / p99 per protocol: the one output that differs from run to run, being a timing).
"""

from __future__ import annotations

from pathlib import Path

from roadwork.config import load_paths, load_stage_params, save_json, subset
from roadwork.ensemble import Scoring
from roadwork.scoring import answer_challenges, headline, latency, level_rows, score_answers
from roadwork.serve.predictor import Predictor


def main() -> None:
    params = load_stage_params("validate")
    paths = load_paths(params)
    answers = answer_challenges(Predictor(params, device="cpu").probability, Path(paths.challenge))
    details = score_answers(answers, subset(Scoring, params, "submit").bootstrap)
    out = Path(paths.validation)
    out.mkdir(parents=True, exist_ok=True)
    answers.drop("seconds").write_parquet(out / "answers.parquet")
    timing = latency(answers)
    save_json(timing, Path(paths.metrics) / "validator_latency.json")
    save_json(details, out / "details.json")
    save_json(level_rows(details), Path(paths.metrics) / "validator_levels.json")
    save_json(headline(details), Path(paths.metrics) / "validator.json")
    for protocol, block in details["protocols"].items():
        for name, s in {"all": block["all"], **block["domains"]}.items():
            print(
                f"validate: {protocol} {name}: MCC {s['mcc']:.3f} [{s['mcc_lo']:.3f}, {s['mcc_hi']:.3f}], "
                f"accuracy {s['accuracy']:.3f}, reward {s['reward']:.3f} ({s['n']} challenges)"
            )
        levels = ", ".join(f"{level} {s['mcc']:.3f}" for level, s in block["levels"].items())
        ms = timing["protocols"][protocol]
        print(f"validate: {protocol} MCC by level: {levels}; latency p50 {ms['p50_ms']:.0f} ms")


if __name__ == "__main__":
    main()
