"""roadwork: a roadwork (construction-zone) classifier for street images, as a cached DVC pipeline."""

__version__ = "0.1.0"
