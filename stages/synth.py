"""Stage `synth`: write the synthetic NATIX-schema dataset (the embedded default's raw data), and the
same scenes re-drawn in a second style (the generated half of the validator-style challenges).

Reads params `synth` and `paths.synthetic`; deletes and rewrites `<paths.synthetic>` (shards under
`data/`, the ground-truth object polygons in `truth_masks.arrow`) and saves the resolved config as
`<paths.synthetic>/synth_config.json`.
"""

from __future__ import annotations

import os
import time

import pyarrow.parquet as pq

from roadwork.config import fresh_dir, load_paths, load_stage_params, save_resolved, section
from roadwork.data.schema import TRUTH_FILE
from roadwork.synth.dataset import DATA_DIR, SynthConfig, write_dataset, write_generated

CONFIG_FILE = "synth_config.json"


def main() -> None:
    params = load_stage_params("synth")
    paths = load_paths(params)
    config = section(SynthConfig, params, "synth")
    workers = min(2, os.cpu_count() or 1)
    for root, write in ((paths.synthetic, write_dataset), (paths.synthetic_generated, write_generated)):
        root = fresh_dir(root, owned=(DATA_DIR, CONFIG_FILE, TRUTH_FILE))  # never a folder of the user's
        start = time.perf_counter()
        shards = write(config, root, workers=workers)
        save_resolved(config, root / CONFIG_FILE)
        for split, files in shards.items():
            rows = sum(pq.read_metadata(f).num_rows for f in files)
            size = sum(f.stat().st_size for f in files) / 1e6
            print(f"synth: {root.name}/{split}: {rows} rows in {len(files)} shards, {size:.1f} MB")
        print(f"synth: wrote {root} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
