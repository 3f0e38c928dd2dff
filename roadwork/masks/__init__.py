"""SAM 3 pseudo-masks: the model and its config (`sam`, `config`), what fills the mask cache (`fill`,
or `truth`: the synthetic world's true polygons, for ablations) and the cache the heads read (`cache`)."""
