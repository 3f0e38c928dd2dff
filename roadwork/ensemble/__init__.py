"""The ensemble: which members exist, how they are ranked and chosen, how their predictions combine.

`choose` ranks members by validation MCC, picks submit's top k and tells which of them are full heads
(the members DoRA and TTA can refine); `combine` averages member logits, layering refinements over the
plain predictions; `submit` turns the choice into the submission, the served choice and the final
metrics. This module owns the `ensemble:` and `submit:` params sections.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from roadwork.config import ConfigError
from roadwork.views.protocols import PROTOCOLS, check_protocol

VARIANTS = ("best_single", "ensemble", "ensemble+dora", "ensemble+tta", "ensemble+dora+tta")
TARGETS = ("natix", "validator")


@dataclass(frozen=True)
class EnsembleConfig:
    """params.yaml `ensemble:`."""

    top_k: int  # submit averages the logits of the best k members by validation MCC
    members: dict[str, dict[str, Any] | None]  # name -> overrides of `train` (one train@<name> stage each)

    def __post_init__(self) -> None:
        if not self.members:
            raise ConfigError("ensemble.members: give at least one member")
        if self.top_k < 1:
            raise ConfigError(f"ensemble.top_k={self.top_k}: expected an int >= 1")

    def overrides(self, member: str) -> dict[str, Any]:
        """Member `member`'s overrides of `train`."""
        if member not in self.members:
            raise ConfigError(f"ensemble.members has no member {member!r}; known: {sorted(self.members)}")
        return dict(self.members[member] or {})


@dataclass(frozen=True)
class Threshold:
    """The key of `submit:` that every reader of labelled predictions needs."""

    threshold: float  # probability above which a row is labelled roadwork

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"submit.threshold={self.threshold}: expected a probability in (0, 1)")


@dataclass(frozen=True)
class Scoring(Threshold):
    """How predictions are scored: the keys of `submit:` that DoRA, TTA and `validate` read too."""

    bootstrap: int  # resamples of the 95 % intervals

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.bootstrap < 1:
            raise ConfigError(f"submit.bootstrap={self.bootstrap}: expected an int >= 1")


@dataclass(frozen=True)
class SubmitConfig(Scoring):
    """params `submit:`."""

    use: str  # variant written to submission.csv and served by `roadwork predict` (one of VARIANTS)
    target: str  # what answers rows with metadata: natix (chosen on the validation rows with metadata)
    # | validator (the route chosen on the validation challenges for their size; calibrated at 0.5)
    protocol_weights: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PROTOCOLS, 1.0))
    # each protocol's weight in choosing and calibrating on the validation challenges
    route_by_size: bool = True  # small images (crop, letterbox) and full-size ones (native) each get
    # their own choice and calibration; false: one for every input

    def __post_init__(self) -> None:
        super().__post_init__()
        for protocol, weight in self.protocol_weights.items():
            check_protocol(protocol)
            if weight < 0:
                raise ConfigError(f"submit.protocol_weights.{protocol}={weight}: expected a weight >= 0")
        if self.use not in VARIANTS:
            raise ConfigError(f"submit.use={self.use!r}: expected one of {list(VARIANTS)}")
        if self.target not in TARGETS:
            raise ConfigError(f"submit.target={self.target!r}: expected one of {list(TARGETS)}")
