"""The seeds' architectures and MB-DCNN side by side: `wsm train` on one training set, scored on the quality
benchmark's held-out fold (k=5, fold 0, seed 0: the images benchmarks/quality.py keeps out of every fit).

    python benchmarks/architectures.py [--train 400] [--size 128] [--epochs 12] [--batch-size 16] [--seed 0]
        [--runs unet,unet_scratch,segnet,unet_aspp,convmixer,mbdcnn] [--threads 0]
        [--source DEV_DATA] [--data DATA] [--work out/bench-architectures] [--small]

Every run trains on the same --train images (drawn from folds 1-4 by a hash of (seed, isic_id)) with their official
masks, at the same size, epochs, batch size and learning rate, and is scored on every fold-0 mask (the official
metrics per image, then the mean: RUN/metrics.json). The runs:

    unet            U-Net, EfficientNet-Lite0 encoder from the packaged ImageNet weights (the default of `wsm train`)
    unet_scratch    the same from random weights (the fair reference for the networks below that have no weights)
    segnet          SegNet with its own small VGG-like encoder (segnet_small), from random weights
    unet_aspp       U-Net with ASPP (rates 2, 3, 4) on the deepest features, Lite0 ImageNet encoder
    convmixer       ConvMixer-256/8 (kernel 9, patch 8) as a segmentation network, from random weights
    mbdcnn          `wsm train --pipeline mbdcnn` with the flags above for every stage: the coarse network, the
                    mask-guided classifier's CAM alone (its map x 255 thresholded at 128, resized to the mask) and
                    the enhanced network, each scored on fold 0

Each run is reused when its metrics.json exists (delete the run folder to redo it). The table goes to stdout and
WORK/results.json. ``--small`` is a smoke test with tiny images and one epoch.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from devdata import ISIC2018_CROPS  # noqa: E402
from downstream import benchmark_data  # noqa: E402
from quality import fold_of, import_source  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
QUALITY_DATA = REPO / "out" / "bench-quality" / "data"

# name -> (`wsm train` flags, what it is)
RUNS = {
    "unet": (["--arch", "unet", "--encoder", "tf_efficientnet_lite0"], "U-Net, Lite0 ImageNet"),
    "unet_scratch": (["--arch", "unet", "--encoder", "tf_efficientnet_lite0", "--no-pretrained"],
                     "U-Net, Lite0 from scratch"),
    "segnet": (["--arch", "segnet", "--encoder", "segnet_small", "--no-pretrained"], "SegNet (segnet_small), scratch"),
    "unet_aspp": (["--arch", "unet_aspp", "--encoder", "tf_efficientnet_lite0"], "U-Net+ASPP, Lite0 ImageNet"),
    "convmixer": (["--arch", "convmixer", "--encoder", "convmixer_256_8", "--no-pretrained"],
                  "ConvMixer-256/8, scratch"),
    "mbdcnn": (["--pipeline", "mbdcnn", "--arch", "unet", "--encoder", "tf_efficientnet_lite0"],
               "MB-DCNN (U-Net, Lite0 ImageNet)"),
}


def split_ids(data: Path, n_train: int, seed: int) -> dict[str, list[str]]:
    """Fold 0 (k=5, seed 0) as eval; n_train masked images of the other folds by a hash of (seed, isic_id)."""
    import pandas as pd

    ids = sorted(pd.read_parquet(data / "gt_manifest.parquet")["isic_id"].unique())
    held_out = [i for i in ids if fold_of(i, 5, 0) == 0]
    rest = sorted((i for i in ids if fold_of(i, 5, 0) != 0),
                  key=lambda i: hashlib.sha256(f"architectures:{seed}:{i}".encode()).digest())
    if n_train > len(rest):
        raise SystemExit(f"asked for {n_train} training images; folds 1-4 have {len(rest)}")
    return {"eval": held_out, "labelled": sorted(rest[:n_train]), "weak": []}


def train_command(name: str, data: Path, run: Path, args) -> list[str]:
    flags, _ = RUNS[name]
    command = ["wsm", "train", "--data", str(data), "--out", str(run), "--labels", "official",
               "--train-split", "train", "--eval-split", "test", "--epochs", str(args.epochs),
               "--size", str(args.size), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
               "--seed", str(args.seed), "--device", "cpu", *flags]
    if args.small:
        command += ["--set", "classifier.arch=test_resnet"] if name == "mbdcnn" else []
        command = [("test_resnet" if c == "tf_efficientnet_lite0" else c) for c in command]
        if "--no-pretrained" not in command:
            command.append("--no-pretrained")
    return command


def cam_alone(data: Path, run: Path, ids: list[str]) -> dict:
    """MB-DCNN's CAMs (RUN/cams, x 255 at the working size) thresholded at 128 and scored like a mask."""
    import numpy as np
    import pandas as pd
    from PIL import Image

    from wsm.metrics import confusion_counts, image_metrics

    gt = pd.read_parquet(data / "gt_manifest.parquet").set_index("isic_id")
    scores = []
    for isic_id in ids:
        truth = np.asarray(Image.open(data / gt.loc[isic_id, "mask_file"])) > 128
        cam = Image.open(run / "cams" / f"{isic_id}.png").resize(truth.shape[::-1], Image.BILINEAR)
        scores.append(image_metrics(confusion_counts(truth, np.asarray(cam) >= 128)))
    return {key: float(np.mean([s[key] for s in scores])) for key in ("jaccard", "threshold_jaccard", "dice")}


def run_one(name: str, data: Path, work: Path, args, eval_ids: list[str]) -> dict:
    run = work / f"run-{name}"
    metrics_file = run / "metrics.json"
    command = train_command(name, data, run, args)
    seconds = None
    if not metrics_file.exists():
        print("$", shlex.join(command), flush=True)
        env = dict(os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {}))
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "wsm", *command[1:]], check=True, env=env)
        seconds = time.perf_counter() - t0
        (run / "bench_seconds.txt").write_text(f"{seconds:.1f}\n")
    elif (run / "bench_seconds.txt").exists():
        seconds = float((run / "bench_seconds.txt").read_text())
    metrics = json.loads(metrics_file.read_text())
    means = metrics["metrics"] if "metrics" in metrics else metrics
    row = {"run": name, "what": RUNS[name][1], "command": shlex.join(command), "seconds": seconds,
           "jaccard": means.get("jaccard"), "threshold_jaccard": means.get("threshold_jaccard"),
           "dice": means.get("dice")}
    if name == "mbdcnn":
        row["coarse"] = metrics.get("coarse_metrics") or {}
        row["cam_alone"] = cam_alone(data, run, eval_ids)
    return row


def table(rows: list[dict]) -> str:
    lines = ["| run | what | Jaccard | threshold Jaccard | Dice | minutes |", "|---|---|---|---|---|---|"]

    def line(name: str, what: str, m: dict, seconds) -> str:
        minutes = f"{seconds / 60:.1f}" if seconds else "-"
        return (f"| {name} | {what} | {m.get('jaccard', float('nan')):.4f} | "
                f"{m.get('threshold_jaccard', float('nan')):.4f} | {m.get('dice', float('nan')):.4f} | {minutes} |")

    for row in rows:
        if row["run"] == "mbdcnn":
            lines.append(line("mbdcnn coarse", "its coarse network", row["coarse"], None))
            lines.append(line("mbdcnn CAM", "the mask-guided classifier's CAM alone", row["cam_alone"], None))
            lines.append(line("mbdcnn enhanced", "the enhanced network (all three trained)", row, row["seconds"]))
        else:
            lines.append(line(row["run"], row["what"], row, row["seconds"]))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=400, help="training images (official masks), folds 1-4")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", default=",".join(RUNS), help=f"comma list of {', '.join(RUNS)}")
    parser.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS for the runs (0: torch's default)")
    parser.add_argument("--source", type=Path, default=ISIC2018_CROPS)
    parser.add_argument("--data", type=Path, help="an imported DATA of the whole source (default: the quality "
                                                  "benchmark's, or imported into WORK)")
    parser.add_argument("--work", type=Path, default=REPO / "out" / "bench-architectures")
    parser.add_argument("--small", action="store_true", help="smoke test: 16 images, 64 px, 1 epoch, tiny encoders")
    args = parser.parse_args()
    names = [n.strip() for n in args.runs.split(",") if n.strip()]
    unknown = [n for n in names if n not in RUNS]
    if unknown:
        parser.error(f"unknown run(s) {', '.join(unknown)}; choose from {', '.join(RUNS)}")
    if args.small:
        args.train, args.size, args.epochs, args.batch_size = 16, 64, 1, 8
        if args.work == parser.get_default("work"):
            args.work = REPO / "out" / "bench-architectures-small"
    source = args.data or (QUALITY_DATA if (QUALITY_DATA / "manifest.parquet").exists() else None)
    if source is None:
        source = args.work / "source-data"
        import_source(args.source, source)
    parts = split_ids(source, args.train, args.seed)
    if args.small:
        parts["eval"] = parts["eval"][:12]
    data = benchmark_data(source, args.work / "data", parts)
    print(f"{len(parts['labelled'])} training masks, {len(parts['eval'])} eval masks (fold 0); size {args.size}, "
          f"{args.epochs} epochs, batch {args.batch_size}, lr {args.lr}, seed {args.seed}", flush=True)
    rows = [run_one(name, data, args.work, args, parts["eval"]) for name in names]
    (args.work / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(table(rows))
    print(f"results: {args.work / 'results.json'}")


if __name__ == "__main__":
    main()
