"""The no-learning baseline on real ISIC masks: how far colour thresholding gets.

    .venv/bin/python benchmarks/classic_baseline.py [--n 200] [--seed 0] [--working-size 512]
        [--data DEV_DATA]

Samples ``--n`` images (by isic_id, ``random.Random(seed)``) of the ISIC 2018 Task 1 training set (512 px crops),
runs :func:`wsm.stages.classic.segment_classic` with its default configs and prints the official metrics (macro
means) of the label map, with the uncertain (255) pixels counted as background and left out, and of the binary
refined mask the label map was decided from (no 255: what thresholding alone gives); then the certain-pixel
coverage and the throughput. Classic fits nothing to these masks, so scoring it on them is honest.
"""
from __future__ import annotations

import argparse
import csv
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import cv2  # noqa: E402

from wsm.io.images import read_image, read_mask  # noqa: E402
from wsm.metrics import aggregate, score_label_map, score_mask  # noqa: E402
from wsm.stages.classic import ClassicPipelineConfig, segment_classic  # noqa: E402
from wsm.stages.refine import to_original_size  # noqa: E402
from devdata import ISIC2018_CROPS  # noqa: E402

DEFAULT_DATA = ISIC2018_CROPS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with pairs.csv, images/, masks/")
    parser.add_argument("--n", type=int, default=200, help="number of images (0 = all)")
    parser.add_argument("--seed", type=int, default=0, help="sample seed")
    parser.add_argument("--threads", type=int, default=1, help="OpenCV threads")
    parser.add_argument(
        "--working-size",
        type=int,
        default=512,
        help="working size; the pixel-unit defaults (CRF kernel widths, decision band) are scaled from 512 with it",
    )
    args = parser.parse_args(argv)

    pairs_csv = args.data / "pairs.csv"
    if not pairs_csv.is_file():
        print(f"no {pairs_csv}: pass --data with the isic2018-task1-512 folder", file=sys.stderr)
        return 2
    cv2.setNumThreads(args.threads)
    with open(pairs_csv, newline="") as fh:
        rows = sorted(csv.DictReader(fh), key=lambda r: r["isic_id"])
    if 0 < args.n < len(rows):
        rows = random.Random(args.seed).sample(rows, args.n)

    cfg = ClassicPipelineConfig()
    if args.working_size != 512:
        f = args.working_size / 512
        crf = replace(
            cfg.refine.crf, gaussian_sxy=cfg.refine.crf.gaussian_sxy * f, bilateral_sxy=cfg.refine.crf.bilateral_sxy * f
        )
        cfg = replace(
            cfg,
            preprocess=replace(cfg.preprocess, working_size=args.working_size),
            refine=replace(cfg.refine, crf=crf),
            decision=replace(cfg.decision, band_px=max(1, round(cfg.decision.band_px * f))),
        )
    per_bg, per_ignore, per_refined = [], [], []
    pipeline_s = 0.0
    start = time.perf_counter()
    for row in rows:
        t0 = time.perf_counter()
        rgb = read_image(args.data / row["image"])
        result = segment_classic(rgb, cfg)
        pipeline_s += time.perf_counter() - t0
        truth = read_mask(args.data / row["mask"])
        refined = to_original_size(result.refined_mask.astype("uint8"), (truth.shape[1], truth.shape[0]))
        per_refined.append(score_mask(truth, refined * 255))
        per_bg.append(score_label_map(truth, result.label_map, uncertain="background"))
        ignore = score_label_map(truth, result.label_map, uncertain="ignore")
        ignore["confidence"] = result.confidence
        per_ignore.append(ignore)
    total_s = time.perf_counter() - start

    bg, ig, rf = aggregate(per_bg), aggregate(per_ignore), aggregate(per_refined)
    n = len(rows)
    print(
        f"classic baseline on {n} images of {args.data.name} (seed {args.seed}, default configs, "
        f"working size {cfg.preprocess.working_size}, CRF bilateral_sxy {cfg.refine.crf.bilateral_sxy:g}, "
        f"band_px {cfg.decision.band_px})"
    )
    print(f"  {'label map:':28s}{'255 as background':>18s}{'255 left out':>14s}{'refined mask':>14s}")
    for key in ("jaccard", "threshold_jaccard", "dice", "accuracy", "sensitivity", "specificity"):
        print(f"  {key:28s}{bg[key]:18.4f}{ig[key]:14.4f}{rf[key]:14.4f}")
    print(f"  certain-pixel coverage      {1.0 - ig['uncertain_fraction']:.4f}")
    print(f"  mean confidence             {ig['confidence']:.4f}")
    print(f"  images/s (decode + classic) {n / pipeline_s:.2f}   (with scoring: {n / total_s:.2f}, 1 process)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
