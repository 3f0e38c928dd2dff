"""Stage `validate`: the served model on the test challenges, as a StreetVision validator scores it.

Writes `metrics/validator.json` (the DVC metric: overall MCC and reward as `v_mcc`, `v_reward`),
`<paths.validation>/details.json` (overall, per domain, per level, per (domain, level), each with 95 %
intervals), `answers.parquet` (every challenge's answer), `metrics/validator_levels.json` (the DVC plot
of MCC per domain and level) and `metrics/validator_latency.json` (answer latency p50 / p99: the one
output that differs from run to run, being a timing).
"""

from __future__ import annotations

from pathlib import Path

from roadwork.config import load_paths, load_stage_params, save_json
from roadwork.scoring import answer_challenges, headline, latency, level_rows, score_answers
from roadwork.serve.predictor import Predictor


def main() -> None:
    params = load_stage_params("validate")
    paths = load_paths(params)
    answers = answer_challenges(Predictor(params, device="cpu").probability, Path(paths.challenge))
    details = score_answers(answers, int(params["submit"]["bootstrap"]))
    out = Path(paths.validation)
    out.mkdir(parents=True, exist_ok=True)
    answers.drop("seconds").write_parquet(out / "answers.parquet")
    save_json(latency(answers), Path(paths.metrics) / "validator_latency.json")
    save_json(details, out / "details.json")
    save_json(level_rows(details), Path(paths.metrics) / "validator_levels.json")
    save_json(headline(details), Path(paths.metrics) / "validator.json")
    for name, scores in {"all": details["all"], **details["domains"]}.items():
        print(
            f"validate: {name}: MCC {scores['mcc']:.3f} [{scores['mcc_lo']:.3f}, {scores['mcc_hi']:.3f}], "
            f"accuracy {scores['accuracy']:.3f}, reward {scores['reward']:.3f} ({scores['n']} challenges)"
        )
    for level, scores in details["levels"].items():
        print(f"validate: level {level}: MCC {scores['mcc']:.3f}, accuracy {scores['accuracy']:.3f}")
    timing = latency(answers)
    print(f"validate: answer latency p50 {timing['p50_ms']:.0f} ms, p99 {timing['p99_ms']:.0f} ms")


if __name__ == "__main__":
    main()
