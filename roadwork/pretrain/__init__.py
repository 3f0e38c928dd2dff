"""The embedded default's tiny DINOv3, pretrained here: a corpus of synthetic scenes of its own seed
namespace (`corpus`) and the recipe that teaches the backbone to see objects, never the roadwork label
(`recipe`; `roadwork pretrain` runs it)."""
