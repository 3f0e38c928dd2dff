"""Stage `gps`: cluster the test split's GPS and write per-row sampling weights.

Reads `<paths.prepared>/index.parquet`; writes `<paths.gps>/{clusters,weights}.parquet`, the resolved
config beside them, and `<paths.metrics>/gps.json`.
"""

from __future__ import annotations

from pathlib import Path

from roadwork.config import load_paths, load_stage_params, save_json, save_resolved, section
from roadwork.data.gps import GpsConfig, build_gps, write_gps
from roadwork.data.index import INDEX_FILE, read_index


def main() -> None:
    params = load_stage_params("gps")
    paths = load_paths(params)
    config = section(GpsConfig, params, "gps")

    index = read_index(Path(paths.prepared))
    result = build_gps(index, config, source=str(Path(paths.prepared) / INDEX_FILE))

    write_gps(result, paths.gps)
    save_resolved(config, Path(paths.gps) / "config.json")
    save_json(result.metrics, Path(paths.metrics) / "gps.json")

    m = result.metrics
    print(
        f"gps: k={m['k']} on {m['n_test_gps']} test rows; {m['n_train']} train rows "
        f"({m['null_gps']} without GPS); within {m['near_km']:g} km: "
        f"{m['near_share_weighted']:.1%} weighted vs {m['near_share_uniform']:.1%} uniform; "
        f"ESS {m['ess']:.0f} ({m['ess_fraction']:.0%})"
    )


if __name__ == "__main__":
    main()
