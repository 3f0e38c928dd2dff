"""The generated domain as training data: a miner's own SDXL-style images in the NATIX schema.

A StreetVision validator sends generated images for a third to a half of its queries (SDXL 1.0:
image-to-image from a real image of the same label at strength 0.7, and text-to-image from a caption
rewritten to add or remove roadwork). The `generate` stage makes that domain from the training rows:
`sdxl` with diffusers on a GPU, `synthetic` (the synthetic world's second style) on the embedded
default. `run.run_generate` writes the result as a NATIX-schema dataset with provenance columns.
"""
