"""Stage `export`: the served model as one self-contained folder a miner publishes (`paths.export`).

Heads (safetensors), `ensemble.json`, the view rule and extraction settings, the backbone (copied, or a
public checkpoint's hub id and revision: `export.backbone`), the code transformers' image-classification
pipeline loads with `trust_remote_code`, `model_card.json` (`export.name`, `export.hotkey`,
`export.version`) and a README with the served model's scores on the test challenges
(`roadwork.serve.export`). `roadwork export OUT` writes the same folder from the command line.
"""

from __future__ import annotations

from pathlib import Path

from roadwork.config import load_paths, load_stage_params, section
from roadwork.serve.export import ExportConfig, export_project


def main() -> None:
    params = load_stage_params("export")
    out = Path(load_paths(params).export)
    files = export_project(params, out, section(ExportConfig, params, "export"))
    size = sum(f.stat().st_size for f in files)
    print(f"export: {len(files)} files, {size / 1e6:.1f} MB -> {out}")


if __name__ == "__main__":
    main()
