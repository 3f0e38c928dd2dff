"""Stage `ingest`: raw NATIX shards -> prepared index, quarantine and repairs, and `<metrics>/ingest.json`."""

from __future__ import annotations

from pathlib import Path

from roadwork.config import load_paths, load_stage_params, save_json, save_resolved, section
from roadwork.data.ingest import IngestConfig, ingest, write_prepared


def main() -> None:
    params = load_stage_params("ingest")
    paths = load_paths(params)
    config = section(IngestConfig, params, "ingest")
    result = ingest(Path(paths.raw), config)
    prepared = Path(paths.prepared)
    write_prepared(result, prepared)
    save_resolved(config, prepared / "ingest_config.json")
    save_json(result.metrics, Path(paths.metrics) / "ingest.json")
    m = result.metrics
    reasons = ", ".join(f"{reason} {n}" for reason, n in m["quarantined_by_reason"].items()) or "none"
    fields = ", ".join(f"{field} {n}" for field, n in m["repairs_by_field"].items()) or "none"
    print(
        f"ingest: {m['rows_read']} rows in {m['shards']} shards -> {m['rows_indexed']} indexed "
        f"({m['repaired_rows']} with fields set to NULL: {fields}), {m['quarantined']} quarantined "
        f"({reasons}), {m['duplicates_collapsed']} duplicates collapsed "
        f"({m['cross_split_duplicates']['count']} across splits)"
    )


if __name__ == "__main__":
    main()
