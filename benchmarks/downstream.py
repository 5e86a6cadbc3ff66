"""The ISIC_WSM experiment: does a segmentation network trained on a small labelled set improve when the other
images' weak maps are added? Both networks are scored on the same held-out official masks.

    python benchmarks/downstream.py [--labelled 200] [--weak 800] [--eval 300] [--size 128] [--epochs 8]
        [--epochs-official N|same] [--epochs-finetune N] [--confident-fraction F] [--arch unet]
        [--encoder tf_efficientnet_lite0] [--no-train-pretrained] [--batch-size 16] [--lr 0.001] [--seed 0]
        [--device cpu] [--threads 0]
        [--source DEV_DATA] [--data DATA] [--work out/bench-downstream]
        [--set section.key=value ...] [--small]

Steps (each resumes or is reused when the script is run again with the same --work):

1. DATA: the dev set (2594 ISIC 2018 Task 1 images with masks and ISIC 2017 diagnosis labels) imported once with
   ``archive_client.importer.import_folders`` (the quality benchmark's import is reused when present);
2. a split by a hash of (seed, isic_id): --eval images (held out: their masks are scored, never used), --labelled
   images (official masks), --weak images (their masks are hidden: they stand for the unlabelled archive); a
   benchmark DATA folder (WORK/data) holds exactly those images, the labelled masks as split "train" and the eval
   masks as split "test" (which `wsm fit` never uses);
3. ``wsm fit`` (the default pipeline) on it, eval images excluded: the classifier learns from the image-level
   diagnoses of the labelled and weak images, the segmentation prior and the calibration from the labelled masks
   only; then ``wsm generate --split unlabeled``: ISIC_WSM maps for the weak images (their agreement with the
   hidden masks is reported for information);
4. ``wsm train --labels official``: the labelled masks alone; ``wsm train --labels both``: the labelled masks plus
   the weak maps (255 ignored by the loss); the same architecture, encoder, size and seed; evaluated on the eval
   images' official masks (mean over images of Jaccard, threshold Jaccard, Dice, as isic-challenge-scoring);
5. with --epochs-finetune N, a third run, ``wsm train --labels official --init RUN-official+weak``: the weak-map
   run fine-tuned on the labelled masks alone for N epochs at half the learning rate;
6. with --confident-fraction F, a fourth run, ``wsm train --labels both --min-confidence C``: the labelled masks
   plus only the most confident fraction F of the weak maps (C from the WSM manifest's confidences; no mask is
   looked at to choose it), with as many optimiser steps as the run with all the weak maps.

Training budget: by default the official-only run gets as many optimiser steps as the run with weak maps
(--epochs-official = epochs x (labelled + weak) / labelled), so that it is not merely undertrained;
``--epochs-official same`` gives it the same number of epochs instead.

What limits the CPU defaults (200 labelled, 800 weak, 300 eval, 128 px, EfficientNet-Lite0 U-Net from ImageNet
weights, 8 epochs): time on a 2-core machine. Every network (the fit's classifier and prior, both trained
students) starts from the packaged ImageNet weights (docs/INSTALL.md); --no-train-pretrained starts the students
from random weights.
The eval set of 300 gives a standard error of about 0.01 on the mean Jaccard.

GPU-sized settings (the ISIC_WSM paper's question at a useful scale; about 1 h on one recent GPU)::

    python benchmarks/downstream.py --device cuda --labelled 200 --weak 2094 --eval 300 --size 384 \\
        --encoder tf_efficientnet_lite2 --epochs 40 --batch-size 16 --lr 0.0005

(fit and generate then use the default pipeline's [device.cuda] sizes.) ``--small`` is a smoke test that runs
everything with tiny models from random weights in minutes.
A WORK folder belongs to one set of settings: the script refuses to reuse it with others.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import sys
import time
from pathlib import Path
from devdata import ISIC2018_CROPS

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = ISIC2018_CROPS
QUALITY_DATA = REPO / "out" / "bench-quality" / "data"

SMALL_FIT = ["classifier.arch=test_resnet", "classifier.size=64", "classifier.epochs=1", "classifier.batch_size=8",
             "prior.encoder=test_resnet", "prior.size=64", "prior.epochs=1", "prior.batch_size=8",
             "preprocess.working_size=96", "calibration.max_images=6", "crf.bilateral_sxy=4.0",
             "classifier.pretrained=false", "prior.pretrained=false"]


def rank_key(isic_id: str, seed: int) -> bytes:
    return hashlib.sha256(f"downstream:{seed}:{isic_id}".encode()).digest()


def partition(ids: list[str], n_eval: int, n_labelled: int, n_weak: int, seed: int) -> dict[str, list[str]]:
    """Disjoint eval / labelled / weak sets, drawn in the order of a hash of (seed, isic_id)."""
    ordered = sorted(ids, key=lambda i: rank_key(i, seed))
    if n_eval + n_labelled + n_weak > len(ordered):
        raise SystemExit(f"asked for {n_eval} + {n_labelled} + {n_weak} images; the source has {len(ordered)}")
    parts = {"eval": ordered[:n_eval], "labelled": ordered[n_eval:n_eval + n_labelled],
             "weak": ordered[n_eval + n_labelled:n_eval + n_labelled + n_weak]}
    return {k: sorted(v) for k, v in parts.items()}


def source_data(args) -> Path:
    """An imported DATA folder of the whole dev set (given, the quality benchmark's, or imported here)."""
    if args.data is not None:
        return args.data
    if (QUALITY_DATA / "manifest.parquet").exists():
        return QUALITY_DATA
    data = args.work / "source-data"
    if not (data / "manifest.parquet").exists():
        from archive_client.importer import import_folders

        labels = args.source / "pairs.csv" if (args.source / "pairs.csv").exists() else None
        import_folders(data, images=args.source / "images", masks=args.source / "masks", labels=labels,
                       challenge="isic2018", split="train", link=True, progress=True)
    return data


def benchmark_data(source: Path, out: Path, parts: dict[str, list[str]]) -> Path:
    """WORK/data: the images in play, labelled masks as split train, eval masks as split test, no other mask."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from archive_client.layout import DataLayout
    from archive_client.manifest import GT_MANIFEST
    from wsm.io.tables import write_table_atomic

    layout = DataLayout(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("images", "masks"):
        link = out / name
        if not link.exists():
            os.symlink((source / name).resolve(), link)
    keep = set(parts["eval"]) | set(parts["labelled"]) | set(parts["weak"])
    manifest = pq.read_table(source / "manifest.parquet")
    manifest = manifest.filter(pa.array([i in keep for i in manifest.column("isic_id").to_pylist()]))
    write_table_atomic(manifest, layout.manifest)
    gt = pd.read_parquet(source / "gt_manifest.parquet")
    split = {**{i: "train" for i in parts["labelled"]}, **{i: "test" for i in parts["eval"]}}
    gt = gt[gt["isic_id"].isin(split)].assign(split=lambda d: d["isic_id"].map(split))
    write_table_atomic(pa.Table.from_pandas(gt[GT_MANIFEST.names], schema=GT_MANIFEST, preserve_index=False),
                       layout.gt_manifest)
    return out


def weak_map_quality(source: Path, wsm_dir: Path, ids: list[str]) -> dict:
    """Agreement of the weak maps with the weak images' hidden official masks (255 as background / left out)."""
    import pandas as pd

    from wsm.io.images import read_mask
    from wsm.report.metrics import aggregate, score_label_map
    from wsm.selection import read_truth

    truth = read_truth(source).set_index("isic_id")
    manifest = pd.read_parquet(wsm_dir / "manifest.parquet").set_index("isic_id")
    bg, ig = [], []
    for isic_id in ids:
        if isic_id not in manifest.index or manifest.loc[isic_id, "status"] != "ok":
            continue
        mask = read_mask(source / truth.loc[isic_id, "mask_file"])
        label_map = read_mask(wsm_dir / manifest.loc[isic_id, "path"])
        bg.append(score_label_map(mask, label_map, uncertain="background"))
        ig.append(score_label_map(mask, label_map, uncertain="ignore"))
    a, b = aggregate(bg), aggregate(ig)
    return {"n": len(bg), "jaccard_255_as_background": a["jaccard"], "jaccard_255_left_out": b["jaccard"],
            "uncertain_fraction": a["uncertain_fraction"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labelled", type=int, default=200, help="images whose official masks train")
    parser.add_argument("--weak", type=int, default=800, help="images that get weak maps (masks hidden)")
    parser.add_argument("--eval", type=int, default=300, help="held-out images whose official masks score")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=8, help="epochs of the run with weak maps")
    parser.add_argument("--epochs-official", default=None,
                        help="epochs of the official-only run: a number, 'same', or (default) equal optimiser steps")
    parser.add_argument("--epochs-finetune", type=int, default=0,
                        help="a third run: the weak-map run fine-tuned on the labelled masks for this many epochs "
                             "(0, the default: no third run)")
    parser.add_argument("--confident-fraction", type=float, default=0.0,
                        help="a fourth run: the labelled masks plus only this most confident fraction of the weak "
                             "maps, by the WSM manifest's confidence (0, the default: no fourth run)")
    parser.add_argument("--arch", default="unet")
    parser.add_argument("--encoder", default="tf_efficientnet_lite0")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers while training")
    parser.add_argument("--train-pretrained", action=argparse.BooleanOptionalAction, default=True,
                        help="ImageNet encoder for the `wsm train` runs")
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--data", type=Path, help="an imported DATA of the whole source (default: reuse or import)")
    parser.add_argument("--work", type=Path, default=REPO / "out" / "bench-downstream")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="`wsm fit` overrides")
    parser.add_argument("--small", action="store_true",
                        help="smoke test: 24 labelled, 40 weak, 24 eval, 64 px, tiny models, 2 epochs")
    args = parser.parse_args()
    if not 0 <= args.confident_fraction <= 1:
        parser.error(f"--confident-fraction must be within (0, 1] (0: no fourth run), got {args.confident_fraction}")
    if args.small:
        args.labelled, args.weak, args.eval, args.size, args.epochs = 24, 40, 24, 64, 2
        args.encoder, args.batch_size, args.lr, args.train_pretrained = "test_resnet", 8, 1e-2, False
        args.overrides = SMALL_FIT + args.overrides
        if args.work == parser.get_default("work"):
            args.work = REPO / "out" / "bench-downstream-small"

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from wsm.fit import FitOptions, fit
    from wsm.generate import GenerateOptions, generate
    from wsm.selection import read_manifest
    from wsm.train import TrainOptions, run

    started = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    source = source_data(args)
    parts = partition(read_manifest(source)["isic_id"].tolist(), args.eval, args.labelled, args.weak, args.seed)
    settings = {"source": str(source.resolve()), "parts": parts, "fit_overrides": args.overrides,
                "device": args.device}
    settings_path = args.work / "settings.json"
    if settings_path.exists() and json.loads(settings_path.read_text()) != settings:
        raise SystemExit(f"{args.work} holds a benchmark run with other settings (split, fit overrides or device); "
                         "use another --work")
    settings_path.write_text(json.dumps(settings, indent=1))
    data = benchmark_data(source, args.work / "data", parts)
    for name, ids in parts.items():
        (args.work / f"{name}_ids.txt").write_text("".join(f"{i}\n" for i in ids))
    seconds = {}

    bundle, wsm_dir = args.work / "bundle", args.work / "wsm"
    t0 = time.perf_counter()
    if not (bundle / "provenance.json").exists():
        summary = fit(FitOptions(data=data, out=bundle, pipeline="default", device=args.device,
                                 overrides=tuple(args.overrides), exclude_ids=frozenset(parts["eval"])))
        print("\n".join(summary.lines()), flush=True)
    seconds["fit"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    gen = generate(GenerateOptions(out=wsm_dir, bundle=bundle, data=data, split="unlabeled", device=args.device))
    print("\n".join(gen.lines()), flush=True)
    seconds["generate"] = time.perf_counter() - t0
    weak_quality = weak_map_quality(source, wsm_dir, parts["weak"])
    print(f"weak maps vs the weak images' hidden masks: {json.dumps(weak_quality)}", flush=True)

    n_both = args.labelled + args.weak
    if args.epochs_official in (None, "steps"):
        epochs_official = max(1, round(args.epochs * n_both / args.labelled))
    elif args.epochs_official == "same":
        epochs_official = args.epochs
    else:
        epochs_official = int(args.epochs_official)
    common = dict(data=data, split_train="train", eval_split="test", arch=args.arch, encoder=args.encoder,
                  size=args.size, batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=args.device,
                  workers=args.workers, pretrained=args.train_pretrained, resume=True)
    runs = {"official": TrainOptions(out=args.work / "run-official", labels="official", epochs=epochs_official,
                                     **common),
            "official+weak": TrainOptions(out=args.work / "run-official+weak", labels="both", wsm=wsm_dir,
                                          epochs=args.epochs, **common)}
    if args.epochs_finetune:
        runs["weak, then official (+init)"] = TrainOptions(
            out=args.work / "run-finetune", labels="official", init=str(runs["official+weak"].out),
            epochs=args.epochs_finetune, **{**common, "lr": args.lr / 2, "pretrained": False})  # init: every weight
    if args.confident_fraction:
        import math

        import pandas as pd

        confidence = pd.read_parquet(wsm_dir / "manifest.parquet").set_index("isic_id")["confidence"]
        # rounded down, so that the fraction kept is at least the one asked for
        threshold = math.floor(float(confidence.reindex(parts["weak"]).quantile(1 - args.confident_fraction))
                               * 1e4) / 1e4
        n_confident = int((confidence.reindex(parts["weak"]) >= threshold).sum())
        steps = args.epochs * n_both
        runs["official+confident weak"] = TrainOptions(
            out=args.work / "run-official+confident", labels="both", wsm=wsm_dir, min_confidence=threshold,
            epochs=max(1, round(steps / (args.labelled + n_confident))), **common)
    results = {}
    for name, opts in runs.items():
        t0 = time.perf_counter()
        summary = run(opts)
        seconds[f"train {name}"] = time.perf_counter() - t0
        results[name] = {"n_train": summary.n_train, "epochs": opts.epochs, "n_eval": summary.n_eval,
                         **{k: summary.metrics[k] for k in ("jaccard", "threshold_jaccard", "dice")},
                         "command": opts.command().replace(" --resume", "")}
        print(f"{name}: {json.dumps(results[name])}", flush=True)
    seconds["total"] = time.perf_counter() - started

    bench_cmd = shlex.join([sys.executable, *sys.argv])
    report = {"command": bench_cmd, "seed": args.seed, "split": {k: len(v) for k, v in parts.items()},
              "weak_map_quality": weak_quality, "results": results, "seconds": seconds,
              "fit_command": f"wsm fit --data {data} --out {bundle} --exclude {args.work / 'eval_ids.txt'}"
                             + "".join(f" --set {o}" for o in args.overrides),
              "generate_command": f"wsm generate --data {data} --bundle {bundle} --split unlabeled --out {wsm_dir}"}
    (args.work / "results.json").write_text(json.dumps(report, indent=2))

    print(f"\ncommand: {bench_cmd}\nseed: {args.seed}; split by sha256(downstream:seed:isic_id): "
          f"{args.labelled} labelled, {args.weak} weak, {args.eval} eval (official masks, never trained on)")
    print(f"{'training labels':29s} {'images':>6s} {'epochs':>6s} {'Jaccard':>8s} {'thr.Jacc':>8s} {'Dice':>8s}")
    for name, r in results.items():
        print(f"{name:29s} {r['n_train']:6d} {r['epochs']:6d} {r['jaccard']:8.4f} {r['threshold_jaccard']:8.4f} "
              f"{r['dice']:8.4f}")
    for name, r in results.items():
        print(f"  {name}: {r['command']}")
    print(f"  maps: {report['fit_command']} && {report['generate_command']}")
    print("time: " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()))


if __name__ == "__main__":
    main()
