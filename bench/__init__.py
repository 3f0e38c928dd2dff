"""Speed benchmarks: how fast the stages and models run (`python -m bench.<name>`), reported with the
machine and the command in docs/benchmarks.md. Experiments that measure accuracy live in `experiments/`."""
