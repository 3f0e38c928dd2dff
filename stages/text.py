"""Stage `text`: MiniLM embeddings of every image's scene description."""

from __future__ import annotations

from pathlib import Path

from roadwork.config import fresh_dir, load_paths, load_stage_params, save_resolved, section
from roadwork.data.index import read_index
from roadwork.features.text import TextConfig, build_text_cache


def main() -> None:
    params = load_stage_params("text")
    paths = load_paths(params)
    config = section(TextConfig, params, "text")
    out = fresh_dir(paths.text)
    counts = build_text_cache(read_index(Path(paths.prepared)), out, config)
    save_resolved(config, out / "text_config.json")
    print(
        f"text: {counts['with_text']}/{counts['rows']} rows with a description "
        f"({counts['distinct']} distinct) -> {out}"
    )


if __name__ == "__main__":
    main()
