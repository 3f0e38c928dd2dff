"""Side by side with what StreetVision miners do today: a whole backbone fine-tuned end to end at 224 px.

The peers' recipe on the pipeline's own backbone (`paths.backbone`: the embedded default's pretrained
tiny DINOv3, or the real one): `roadwork.models.peer` puts a linear head on it, and it is fine-tuned
end to end on the train rows (the validation rows held out, as every member holds them out), each epoch
on a fresh validator-style copy of every image (a level 0-3 drawn per image, 224 px, JPEG quality 75),
with early stopping on the validation challenges' MCC at 0.5. The best epoch is saved with
`save_pretrained` (+ the image processor and this project's model class), so it loads as
`pipeline("image-classification", model=DIR, trust_remote_code=True)` and answers "Roadwork".

Both sides are then scored by the `validate` stage's code on the same test challenges (real and
generated halves, 95 % intervals), on the NATIX test split's images as plain files, and by answer
latency; their average (mean probability) too. Costs: backbone passes and wall time on this machine.
Runs in a project whose pipeline has run (`dvc repro`); writes `<out>/model/`, `<out>/peers.json`
and `<out>/peers.md` (the table).

    python -m experiments.peers                       # the embedded default: experiments/results/peers
    python -m experiments.peers --epochs 1 --steps 1  # a smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import io
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from PIL import Image
from transformers import DINOv3ViTImageProcessor, pipeline

from roadwork.config import load_params, load_paths, save_json, section
from roadwork.data.images import ShardReader
from roadwork.data.index import read_index
from roadwork.features.backbone import load_backbone
from roadwork.features.extract import ExtractConfig, embed_views
from roadwork.metrics import binary_metrics
from roadwork.models.peer import LABELS, classifier_from_backbone
from roadwork.scoring import answer_challenges, latency, score_answers
from roadwork.serve.predictor import Predictor
from roadwork.train.data import train_val_rows
from roadwork.views.challenges import read_table
from roadwork.views.plan import ViewsConfig, n_views
from roadwork.views.protocols import LEVELS, SIZE, challenge_rng, draw_protocol, protocol_jpeg

ROADWORK = LABELS[1]


@dataclasses.dataclass(frozen=True)
class PeerConfig:
    """The peers' recipe (public miners: AdamW, a few epochs, the validator's augmentations)."""

    epochs: int = 10  # at most
    patience: int = 3  # epochs without a better validation-challenge MCC before stopping
    batch: int = 32
    lr: float = 3e-4  # AdamW, the backbone (of 5e-5 and 3e-4, the better on the validation challenges)
    head_lr: float = 1e-3  # AdamW, the new linear head
    weight_decay: float = 0.05
    seed: int = 0  # head init, batch order, every augmentation draw
    threads: int = 2  # torch threads
    steps: int | None = None  # stop every epoch after this many steps (a smoke run)
    protocols: tuple[tuple[str, float], ...] = (("crop", 1.0), ("letterbox", 1.0))  # training copies'
    # protocol shares (`extract.challenge_protocols`: the same inputs as the pipeline's copies)


def image_bytes(rows: pl.DataFrame, raw_root: Path) -> list[bytes]:
    """The JPEG bytes of index rows, in row order."""
    reader = ShardReader(raw_root)
    return [reader.read(shard, row) for shard, row in rows.select("shard", "row").iter_rows()]


def pixels(processor: DINOv3ViTImageProcessor, jpegs: list[bytes]) -> torch.Tensor:
    """[B, 3, 224, 224] normalised pixels of JPEG bytes: the image processor the pipeline serves with."""
    images = [Image.open(io.BytesIO(b)).convert("RGB") for b in jpegs]
    return processor(images=images, return_tensors="pt")["pixel_values"]


def epoch_copies(
    rows: pl.DataFrame, data: list[bytes], epoch: int, seed: int, shares: dict[str, float]
) -> list[bytes]:
    """One validator-style copy of every row's image (its own protocol, drawn by `shares` as the
    pipeline's training copies are, its own level and draws, per epoch)."""
    out = []
    for d, (image_id, w, h) in zip(data, rows.select("image_id", "width", "height").iter_rows(), strict=True):
        rng = challenge_rng(seed, f"peer/{epoch}/{image_id}")
        protocol, level = draw_protocol(rng, shares), int(rng.integers(0, len(LEVELS)))
        out.append(protocol_jpeg(d, (w, h), protocol=protocol, level=level, rng=rng))
    return out


@torch.inference_mode()
def roadwork_probability(model: torch.nn.Module, batch: torch.Tensor, chunk: int = 64) -> np.ndarray:
    """P(Roadwork) of pixels `[n, 3, H, W]` (the softmax score the pipeline returns for the label),
    `chunk` images per forward so that a real backbone's activations fit."""
    parts = [
        model(pixel_values=batch[i : i + chunk]).logits.softmax(-1)[:, 1] for i in range(0, len(batch), chunk)
    ]
    return torch.cat(parts).numpy()


def fine_tune(
    *,
    model: torch.nn.Module,
    processor: Any,
    train: tuple[pl.DataFrame, list[bytes]],
    val: tuple[np.ndarray, list[bytes]],
    config: PeerConfig,
) -> dict[str, Any]:
    """Fine-tune `model` end to end in place (its best epoch's weights at the end); the log."""
    rows, data = train
    val_labels, val_pixels = val[0], pixels(processor, val[1])
    labels = torch.tensor(rows["label"].to_list(), dtype=torch.long)
    head = list(model.classifier.parameters())
    backbone = [p for n, p in model.named_parameters() if not n.startswith("classifier.")]
    optimiser = torch.optim.AdamW(
        [{"params": backbone, "lr": config.lr}, {"params": head, "lr": config.head_lr}],
        weight_decay=config.weight_decay,
    )
    rng = np.random.default_rng(config.seed)
    log: dict[str, Any] = {"epochs": [], "train_images": 0, "val_images": 0}
    best, best_state, started = -1.0, None, time.perf_counter()
    for epoch in range(config.epochs):
        copies = epoch_copies(rows, data, epoch, config.seed, dict(config.protocols))
        order = rng.permutation(len(rows))
        model.train()
        batches = [order[i : i + config.batch] for i in range(0, len(order), config.batch)]
        for batch in batches[: config.steps]:
            loss = model(
                pixel_values=pixels(processor, [copies[i] for i in batch]), labels=labels[batch]
            ).loss
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            log["train_images"] += len(batch)
        model.eval()
        scores = binary_metrics(val_labels, roadwork_probability(model, val_pixels))
        log["val_images"] += len(val_labels)
        log["epochs"].append(
            {"epoch": epoch, "loss": loss.item(), "val_mcc": scores["mcc"], "val_auc": scores["roc_auc"]}
        )
        print(f"peers: epoch {epoch}: loss {loss.item():.3f}, validation challenges MCC {scores['mcc']:.3f}")
        if scores["mcc"] > best:
            best, best_state = scores["mcc"], {k: v.clone() for k, v in model.state_dict().items()}
        elif epoch - int(np.argmax([e["val_mcc"] for e in log["epochs"]])) >= config.patience:
            break
    model.load_state_dict(best_state)
    return log | {"best_val_mcc": best, "seconds": time.perf_counter() - started}


def save_classifier(model: torch.nn.Module, processor: Any, out_dir: Path) -> None:
    """The model (+ its class's code, so `trust_remote_code` loads it) and the image processor."""
    model.register_for_auto_class("AutoModelForImageClassification")
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)


def pipeline_answer(model_dir: Path) -> Callable[[bytes], float]:
    """The saved classifier as the base miner serves it: JPEG bytes -> the "Roadwork" score."""
    classify = pipeline("image-classification", model=str(model_dir), trust_remote_code=True, device="cpu")

    def answer(data: bytes) -> float:
        scores = classify(Image.open(io.BytesIO(data)).convert("RGB"), top_k=None)
        return next(s["score"] for s in scores if s["label"] == ROADWORK)

    return answer


def natix_scores(labels: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    """NATIX test scores of answers cut at 0.5 (MCC floored at 0, as a validator floors it)."""
    scores = binary_metrics(labels, probs)
    return {"mcc": max(scores["mcc"], 0.0), "roc_auc": scores["roc_auc"], "n": scores["n"]}


def ours_cost(params: dict[str, Any], index: pl.DataFrame, n_val_challenges: int) -> dict[str, Any]:
    """Backbone forward passes of the served model's training (every view of every image and copy,
    once: the cache) and their wall time at the rate measured here on 8 images' views."""
    extract, paths = params["extract"], load_paths(params)
    v = n_views(section(ViewsConfig, params, "views"))
    train = int((index["split"] == "train").sum()) * (1 + extract["aug_copies"] + extract["challenge_copies"])
    passes = v * (train + int((index["split"] == "test").sum()) + n_val_challenges)
    model = load_backbone(Path(paths.backbone), params["backbone"]["dtype"], "cpu")
    views = np.random.default_rng(0).integers(0, 256, (8 * v, extract["side"], extract["side"], 3), np.uint8)
    config = section(ExtractConfig, params, "extract")
    embed_views(model, views, config)  # warm-up
    start = time.perf_counter()
    for _ in range(3):
        embed_views(model, views, config)
    per_view = (time.perf_counter() - start) / (3 * len(views))
    return {"passes": passes, "side": extract["side"], "seconds": passes * per_view}


def scored(answers: pl.DataFrame, bootstrap: int) -> dict[str, Any]:
    """The validate stage's scores of challenge answers, and their latency."""
    return score_answers(answers, bootstrap) | {"latency": latency(answers)}


def compare(params: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Fine-tune the peers' recipe, then score it, the served model and their average side by side."""
    paths = load_paths(params)
    shares = tuple(params["extract"]["challenge_protocols"].items())
    config = PeerConfig(
        epochs=args.epochs, steps=args.steps, threads=args.threads, lr=args.lr, protocols=shares
    )
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    index = read_index(Path(paths.prepared))
    train, _ = train_val_rows(index, params["train"]["val_fraction"], params["train"]["split_seed"])
    challenge_dir = Path(paths.challenge)
    val = read_table(challenge_dir, "val")
    extract = section(ExtractConfig, params, "extract")
    processor = DINOv3ViTImageProcessor(
        size={"height": SIZE, "width": SIZE}, image_mean=list(extract.mean), image_std=list(extract.std)
    )
    model = classifier_from_backbone(load_backbone(Path(paths.backbone), "float32", "cpu"))
    log = fine_tune(
        model=model,
        processor=processor,
        train=(train, image_bytes(train, Path(paths.raw))),
        val=(val["label"].to_numpy(), [(challenge_dir / f).read_bytes() for f in val["file"]]),
        config=config,
    )
    save_classifier(model, processor, args.out / "model")
    answer = {
        "ours": Predictor(params, device="cpu").probability,
        "peers": pipeline_answer(args.out / "model"),
    }
    test = index.filter((pl.col("split") == "test") & pl.col("label").is_not_null())
    data, labels = image_bytes(test, Path(paths.raw)), test["label"].to_numpy()
    challenges = {side: answer_challenges(f, challenge_dir) for side, f in answer.items()}
    natix = {side: np.array([f(d) for d in data]) for side, f in answer.items()}
    challenges["average"] = challenges["ours"].with_columns(
        prob=(challenges["ours"]["prob"] + challenges["peers"]["prob"]) / 2,
        seconds=challenges["ours"]["seconds"] + challenges["peers"]["seconds"],
    )
    natix["average"] = (natix["ours"] + natix["peers"]) / 2
    bootstrap = int(params["submit"]["bootstrap"])
    out: dict[str, Any] = {side: {"challenges": scored(challenges[side], bootstrap)} for side in challenges}
    for side in out:
        out[side]["natix_plain"] = natix_scores(labels, natix[side])
    served = json.loads((Path(paths.metrics) / "final.json").read_text())
    out["ours"]["natix_metadata"] = {"mcc": served["mcc"], "roc_auc": served["roc_auc"]}
    out["ours"]["cost"] = ours_cost(params, index, len(val))
    out["peers"]["cost"] = {
        "passes": log["train_images"] + log["val_images"],
        "side": SIZE,
        "seconds": log["seconds"],
        "backward": log["train_images"],
    }
    return out | {"peers_log": log, "config": dataclasses.asdict(config), "machine": machine()}


def machine() -> dict[str, Any]:
    """Where and when the comparison ran."""
    return {
        "date": datetime.date.today().isoformat(),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def interval(scores: dict[str, Any], name: str) -> str:
    return f"{scores[name]:.3f} [{scores[name + '_lo']:.2f}, {scores[name + '_hi']:.2f}]"


def table(results: dict[str, Any]) -> str:
    """The comparison as markdown: one row per side and protocol."""
    lines = [
        "| | protocol | validator MCC | MCC real / generated | reward | NATIX test MCC (plain files) "
        "| backbone passes (side) | training wall | latency p50 / p99 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    names = {"ours": "this pipeline (served)", "peers": "peers' recipe", "average": "average of both"}
    for side, name in names.items():
        r = results[side]
        cost = r.get("cost")
        passes = f"{cost['passes']:,} ({cost['side']} px)" if cost else "both"
        wall = f"{cost['seconds']:.0f} s" if cost else "both"
        for protocol, c in r["challenges"]["protocols"].items():
            halves = [c["domains"].get(d) for d in ("real", "generated")]  # "-": a half not configured
            domains = " / ".join(f"{h['mcc']:.3f}" if h else "-" for h in halves)
            ms = r["challenges"]["latency"]["protocols"][protocol]
            lines.append(
                f"| {name} | {protocol} | {interval(c['all'], 'mcc')} | {domains} | {c['all']['reward']:.3f} "
                f"| {r['natix_plain']['mcc']:.3f} (AUC {r['natix_plain']['roc_auc']:.3f}) | {passes} "
                f"| {wall} | {ms['p50_ms']:.0f} / {ms['p99_ms']:.0f} ms |"
            )
    m = results["machine"]
    lines.append(f"\n{m['date']}, {m['cpu']}, {m['threads']} threads, torch {m['torch']}.")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("experiments/results/peers"))
    parser.add_argument("--epochs", type=int, default=PeerConfig.epochs)
    parser.add_argument("--steps", type=int, default=None, help="steps per epoch at most (smoke runs)")
    parser.add_argument("--threads", type=int, default=PeerConfig.threads)
    parser.add_argument("--lr", type=float, default=PeerConfig.lr, help="the backbone's AdamW learning rate")
    args = parser.parse_args()
    results = compare(load_params(), args)
    save_json(results, args.out / "peers.json")
    (args.out / "peers.md").write_text(table(results))
    print(table(results))


if __name__ == "__main__":
    main()
