"""Stage `generate`: the generated domain as training data (SDXL, or the synthetic world's second style).

Reads params `generate`, `synth` (the stand-in only) and `paths`; writes `<paths.generated_train>`: a
NATIX-schema dataset with provenance columns, `plan.arrow` and `generate_config.json`. Resumable and
incremental (dvc.yaml keeps the output with `persist: true`); `torchrun --nproc-per-node N -m
stages.generate` splits the shards over N processes (one GPU each).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.feather as feather

from roadwork.config import load_paths, load_stage_params, section
from roadwork.data.index import read_index
from roadwork.data.ingest import IngestConfig
from roadwork.device import resolve_device
from roadwork.distributed import barrier, init_ranks
from roadwork.generate.config import MODEL_SYNTHETIC, GenerateConfig
from roadwork.generate.run import INDEX_FILE, index_generated, run_generate
from roadwork.synth.dataset import SynthConfig


def main() -> None:
    params = load_stage_params("generate")
    paths = load_paths(params)
    config = section(GenerateConfig, params, "generate")
    synth = section(SynthConfig, params, "synth") if config.model == MODEL_SYNTHETIC else None
    ranks = init_ranks(resolve_device(config.device))
    index, out = read_index(Path(paths.prepared)), Path(paths.generated_train)
    counts = run_generate(
        index=index,
        raw_root=Path(paths.raw),
        out_root=out,
        config=config,
        synth=synth,
        ranks=ranks,
    )
    barrier(ranks)  # every rank's shards are written before the stage counts as done
    if ranks.rank == 0:  # the rows as the index has them: what `extract` and `train` read
        rows = index_generated(out, index, section(IngestConfig, params, "ingest"))
        feather.write_feather(rows.to_arrow(), out / INDEX_FILE)
    where = f"generate[{ranks.rank}/{ranks.world}]" if ranks.world > 1 else "generate"
    print(
        f"{where}: {counts['planned']} rows planned ({counts['i2i']} i2i, {counts['t2i']} t2i) in "
        f"{counts['shards']} shards; kept {counts['shards_kept']}, wrote {counts['shards_written']} "
        f"({counts['images']} images, {counts.get('seconds_per_image', 0)} s each) in {counts['seconds']} s"
    )


if __name__ == "__main__":
    main()
