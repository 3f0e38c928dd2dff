"""Experiments on a project whose pipeline has run (`python -m experiments.<name>`): ablations, head
variants, the peers' recipe side by side, the served model on plain files, the challenges' ceiling.
Each writes its table under docs/ or its results under experiments/results/."""
