"""The ISIC_WSM experiment: does a segmentation network trained on a small labelled set improve when the other
images' weak maps are added? Both networks are scored on the same held-out official masks. With --curve: the
label-efficiency curve (Jaccard against the number of labelled masks, both arms, a PNG plot).

    python benchmarks/downstream.py [--labelled 200] [--weak 800] [--eval 300] [--size 128] [--epochs 8]
        [--epochs-official N|same] [--epochs-finetune N] [--confident-fraction F] [--predicted-fraction F]
        [--augment-strength standard|strong] [--arch unet]
        [--encoder tf_efficientnet_lite0] [--no-train-pretrained] [--batch-size 16] [--lr 0.001] [--seed 0]
        [--device cpu] [--threads 0]
        [--source DEV_DATA] [--data DATA] [--work out/bench-downstream]
        [--set section.key=value ...] [--small] [--teacher fit|student|student-holdout]
        [--weak-augment same|strong]
        [--variant NAME]
        [--curve [--curve-n 50,100,200,400] [--curve-seeds 0,1,2] [--curve-seeds-n 100] [--plot PNG]]

--teacher student: the official-only student is trained first and becomes the prior of the bundle that makes the
weak maps (`wsm fit --prior-run`, one self-training round), so the teacher is as good as that student by
construction; the default (fit) fits a bundle on the labelled masks, whose strength the script reports against
the official-only student ("teacher: ... at least as good" or "WEAKER"). --teacher student-holdout: a student
trained like the official-only one on all the labelled masks but a fifth (WORK/run-teacher, on WORK/data-teacher)
is the prior, and that fifth calibrates the bundle and learns its quality model: a teacher nearly as strong as the
student whose predicted_jaccard still comes from masks its prior never learnt from (a student-as-teacher has no
such masks). --weak-augment strong: the student with weak maps augments the weak maps' images more (`wsm train
--weak-augment strong`).

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
   looked at to choose it), with as many optimiser steps as the run with all the weak maps;
7. with --predicted-fraction F, the same with the fraction F of the weak maps the bundle's quality model predicts
   best (``wsm train --min-predicted-jaccard X``, X from the manifest's predicted_jaccard; the model was learnt on
   the teacher's calibration masks, which are labelled images).

--augment-strength strong: every image of every student is augmented with the strong recipe (`wsm train
--augment-strength strong`), the official-only student too, which is the fair baseline for few masks; it makes
another official-only student, so give it its own --work.

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
A WORK folder belongs to one split (source, seeds, sizes, device): the script refuses to reuse it with another.
Variants of the teacher and of the student with weak maps (--set, --weak-augment) share its official-only student:
give each a --variant NAME, which names its bundle, maps, runs and results file (e.g. results-student-NAME.json).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import sys
import time
from pathlib import Path

from devdata import ISIC2018_CROPS

from wsm.train.options import AUGMENT_STRENGTH_CHOICES, WEAK_AUGMENT_CHOICES

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = ISIC2018_CROPS
QUALITY_DATA = REPO / "out" / "bench-quality" / "data"

SMALL_FIT = ["classifier.arch=test_resnet", "classifier.size=64", "classifier.epochs=1", "classifier.batch_size=8",
             "prior.encoder=test_resnet", "prior.size=64", "prior.epochs=1", "prior.min_steps=0",
             "prior.batch_size=8",
             "preprocess.working_size=96", "calibration.max_images=6", "crf.bilateral_sxy=4.0",
             "classifier.pretrained=false", "prior.pretrained=false"]


def rank_key(isic_id: str, seed: int) -> bytes:
    return hashlib.sha256(f"downstream:{seed}:{isic_id}".encode()).digest()


def partition(ids: list[str], n_eval: int, n_labelled: int, n_weak: int, seed: int,
              eval_seed: int | None = None) -> dict[str, list[str]]:
    """Disjoint eval / labelled / weak sets, drawn in the order of a hash of (seed, isic_id).

    With ``eval_seed`` the eval set is drawn by that seed instead (the label-efficiency curve keeps one eval set
    for every N and seed), then labelled and weak from the rest by ``seed``; ``n_weak`` < 0: all the rest."""
    if eval_seed is None:
        ordered = sorted(ids, key=lambda i: rank_key(i, seed))
        evaluation, rest = ordered[:n_eval], ordered[n_eval:]
    else:
        by_eval = sorted(ids, key=lambda i: rank_key(i, eval_seed))
        evaluation, rest = by_eval[:n_eval], sorted(by_eval[n_eval:], key=lambda i: rank_key(i, seed))
    n_weak = len(rest) - n_labelled if n_weak < 0 else n_weak
    if n_eval + n_labelled + max(n_weak, 0) > len(ids) or n_weak < 0:
        raise SystemExit(f"asked for {n_eval} + {n_labelled} + {n_weak} images; the source has {len(ids)}")
    parts = {"eval": evaluation, "labelled": rest[:n_labelled], "weak": rest[n_labelled:n_labelled + n_weak]}
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


def variant_suffix(args) -> str:
    """What names a teacher / student variant's folders and results file in WORK: "", "-student",
    "-student-holdout", then "-NAME"."""
    return ("" if args.teacher == "fit" else f"-{args.teacher}") + (f"-{args.variant}" if args.variant else "")


TEACHER_HOLDOUT = 0.2   # --teacher student-holdout: the fraction of the labelled masks that calibrates


def teacher_split(labelled: list[str], seed: int, fraction: float = TEACHER_HOLDOUT) -> tuple[list[str], list[str]]:
    """The labelled ids the teacher student trains on, and those (``fraction``, at least one) it leaves to calibrate
    the bundle, drawn by a hash of (seed, isic_id) apart from the partition's."""
    ordered = sorted(labelled, key=lambda i: hashlib.sha256(f"downstream-teacher:{seed}:{i}".encode()).digest())
    n_held = max(1, round(len(ordered) * fraction))
    return sorted(ordered[n_held:]), sorted(ordered[:n_held])


def check_settings(path: Path, settings: dict, what: str, instead: str, earlier: dict | None = None) -> dict:
    """Record ``settings`` in ``path`` (other keys there are kept) and return the record, or refuse to go on
    where it, or ``earlier`` when it does not exist yet (what a folder from before variants ran with), records
    others."""
    recorded = json.loads(path.read_text()) if path.exists() else {}
    saved = recorded or earlier
    if saved and {k: saved.get(k) for k in settings} != settings:
        raise SystemExit(f"{path.parent} holds a benchmark run with other settings ({what}); use {instead}")
    record = {**recorded, **settings}
    path.write_text(json.dumps(record, indent=1))
    return record


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
    from wsm.metrics import aggregate, score_label_map
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
    parser.add_argument("--weak", type=int, default=None,
                        help="images that get weak maps (masks hidden); default 800, with --curve all the others "
                             "(-1)")
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
    parser.add_argument("--predicted-fraction", type=float, default=0.0,
                        help="a fifth run: the labelled masks plus only this fraction of the weak maps predicted "
                             "best, by the WSM manifest's predicted_jaccard (0, the default: no fifth run)")
    parser.add_argument("--augment-strength", choices=AUGMENT_STRENGTH_CHOICES, default="standard",
                        help="augmentation of every image in every student (`wsm train --augment-strength`)")
    parser.add_argument("--teacher", choices=("fit", "student", "student-holdout"), default="fit",
                        help="what makes the weak maps: a bundle fitted on the labelled masks (fit), the "
                             "official-only student itself as the bundle's prior (student: `wsm fit --prior-run`), "
                             "or a student trained on four fifths of them, calibrated on the fifth "
                             "(student-holdout)")
    parser.add_argument("--weak-augment", choices=WEAK_AUGMENT_CHOICES, default="same",
                        help="augmentation of the weak maps' images in the student with weak maps (`wsm train "
                             "--weak-augment`)")
    parser.add_argument("--variant", default="",
                        help="a name for this teacher / student variant (its folders and results file carry it)")
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
    parser.add_argument("--eval-seed", type=int, default=None,
                        help="draw the eval set by this seed instead of --seed (the curve uses 0: one eval set)")
    parser.add_argument("--curve", action="store_true",
                        help="the label-efficiency curve: a point for each --curve-n (seed --seed) and for each "
                             "--curve-seeds at --curve-seeds-n, every weak image the rest of the source, one eval set")
    parser.add_argument("--curve-n", default="50,100,200,400", help="labelled masks at each point")
    parser.add_argument("--curve-seeds", default="0,1,2", help="seeds at --curve-seeds-n (for an error bar)")
    parser.add_argument("--curve-seeds-n", type=int, default=100)
    parser.add_argument("--plot", type=Path, help="where the curve's PNG goes (default WORK/label_efficiency.png)")
    parser.add_argument("--small", action="store_true",
                        help="smoke test: 24 labelled, 40 weak, 24 eval, 64 px, tiny models, 2 epochs")
    args = parser.parse_args()
    for flag, value in (("--confident-fraction", args.confident_fraction),
                        ("--predicted-fraction", args.predicted_fraction)):
        if not 0 <= value <= 1:
            parser.error(f"{flag} must be within (0, 1] (0: no such run), got {value}")
    if args.variant and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", args.variant):
        parser.error(f"--variant names folders: letters, digits, '_', '.', '-' only, got {args.variant!r}")
    if args.weak is None:
        args.weak = -1 if args.curve else 800
    if args.small:
        args.labelled, args.weak, args.eval, args.size, args.epochs = 24, 40, 24, 64, 2
        args.encoder, args.batch_size, args.lr, args.train_pretrained = "test_resnet", 8, 1e-2, False
        args.overrides = SMALL_FIT + args.overrides
        if args.work == parser.get_default("work"):
            args.work = REPO / "out" / "bench-downstream-small"
    if args.curve:
        run_curve(args)
    else:
        run_point(args)


def curve_points(args) -> list[tuple[int, int]]:
    """(labelled N, seed) of every point of the curve."""
    ns = [int(x) for x in args.curve_n.split(",")]
    seeds = [int(x) for x in args.curve_seeds.split(",")]
    return sorted({(n, args.seed) for n in ns} | {(args.curve_seeds_n, s) for s in seeds})


def run_curve(args) -> None:
    """Every point in its own WORK/nNNNN-seedS folder (a finished one is read back, not rerun), then the table,
    WORK/curve.json and the plot. Every variant of the same teacher kind finished at a point (an earlier --curve
    run with another --variant) joins the table and the plot as its own arm."""
    import copy

    rows = []
    for n, seed in curve_points(args):
        point = copy.copy(args)
        point.labelled, point.seed, point.curve = n, seed, False
        point.eval_seed = 0 if args.eval_seed is None else args.eval_seed
        point.work = args.work / f"n{n:04d}-seed{seed}"
        if not (point.work / f"results{variant_suffix(args)}.json").exists():
            run_point(point)
        for done in sorted(point.work.glob("results*.json")):
            rows += curve_rows(n, seed, json.loads(done.read_text()), args.teacher)
    rows = list({(r["n"], r["seed"], r["arm"]): r for r in rows}.values())   # the official arm once per point
    summary = curve_summary(rows)
    (args.work / "curve.json").write_text(json.dumps({"command": shlex.join([sys.executable, *sys.argv]),
                                                      "eval_seed": 0 if args.eval_seed is None else args.eval_seed,
                                                      "points": rows, "summary": summary}, indent=2))
    plot = args.plot or args.work / "label_efficiency.png"
    plot_curve(summary, plot)
    print(f"\n{'N':>5s} {'training labels':29s} {'seeds':>5s} {'Jaccard':>8s} {'spread':>7s}")
    for s in summary:
        print(f"{s['n']:5d} {s['arm']:29s} {s['seeds']:5d} {s['jaccard']:8.4f} {s['std']:7.4f}")
    print(f"curve: {args.work / 'curve.json'}, plot: {plot}")


def curve_rows(n: int, seed: int, report: dict, teacher: str) -> list[dict]:
    """The curve's two arms from one point's results file (none when another teacher kind made it; the optional
    third and fourth runs stay in the point's folder); the arm with weak maps carries the variant's name."""
    if report.get("teacher", "fit") != teacher:
        return []
    variant = report.get("variant", "")
    return [{"n": n, "seed": seed, "arm": arm if arm == "official" or not variant else f"{arm} [{variant}]",
             **{k: result[k] for k in ("jaccard", "threshold_jaccard", "dice", "n_train", "epochs")},
             "teacher_jaccard": report["weak_map_quality"]["jaccard_255_as_background"],
             "teacher_at_least_as_good": report.get("teacher_at_least_as_good")}
            for arm, result in report["results"].items() if arm in ("official", "official+weak")]


def curve_summary(rows: list[dict]) -> list[dict]:
    """Mean Jaccard and its standard deviation over seeds, for each (N, arm)."""
    import numpy as np

    groups: dict[tuple[int, str], list[float]] = {}
    for row in rows:
        groups.setdefault((row["n"], row["arm"]), []).append(row["jaccard"])
    return [{"n": n, "arm": arm, "seeds": len(values), "jaccard": float(np.mean(values)),
             "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0}
            for (n, arm), values in sorted(groups.items())]


def plot_curve(summary: list[dict], path: Path) -> None:
    """Jaccard against labelled masks, one line per arm, the seeds' spread as error bars (matplotlib Agg)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for k, arm in enumerate(dict.fromkeys(s["arm"] for s in summary)):
        points = [s for s in summary if s["arm"] == arm]
        dodge = 1.0 + 0.025 * k                          # the arms side by side, so that error bars stay apart
        ax.errorbar([s["n"] * dodge for s in points], [s["jaccard"] for s in points],
                    yerr=[s["std"] for s in points], marker="o", capsize=3, label=arm)
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_title("mean over seeds where several ran (error bars: their standard deviation)", fontsize=8)
    ax.set_xticks(sorted({s["n"] for s in summary}), labels=[str(n) for n in sorted({s["n"] for s in summary})])
    ax.set_xlabel("labelled images (official masks)")
    ax.set_ylabel("Jaccard on the held-out official masks")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def official_epochs(args, n_both: int) -> int:
    """Epochs of the official-only student: --epochs-official as a number, 'same' (--epochs), or by default as many
    optimiser steps as the student with weak maps takes on ``n_both`` images."""
    if args.epochs_official in (None, "steps"):
        return max(1, round(args.epochs * n_both / args.labelled))
    if args.epochs_official == "same":
        return args.epochs
    return int(args.epochs_official)


def student_settings(args, data: Path) -> dict:
    """The `wsm train` settings both students share: labelled masks as split train, scored on split test."""
    return dict(data=data, split_train="train", eval_split="test", arch=args.arch, encoder=args.encoder,
                size=args.size, batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=args.device,
                workers=args.workers, pretrained=args.train_pretrained, augment_strength=args.augment_strength,
                resume=True)


def kept_by(manifest, column: str, ids: list[str], fraction: float) -> tuple[float, int]:
    """The threshold on a WSM manifest column that keeps at least ``fraction`` of the maps of ``ids`` (rounded
    down), and how many maps it keeps. No mask is looked at."""
    import math

    values = manifest.set_index("isic_id")[column].reindex(ids)
    threshold = math.floor(float(values.quantile(1 - fraction)) * 1e4) / 1e4
    return threshold, int((values >= threshold).sum())


def run_point(args) -> dict:
    """One point: a teacher fitted on the labelled masks, its maps of the weak images, and the students."""
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
    parts = partition(read_manifest(source)["isic_id"].tolist(), args.eval, args.labelled, args.weak, args.seed,
                      args.eval_seed)
    suffix = variant_suffix(args)
    augmentation = {"augment_strength": args.augment_strength} if args.augment_strength != "standard" else {}
    shared = check_settings(args.work / "settings.json", {"source": str(source.resolve()), "parts": parts,
                                                          "device": args.device, **augmentation},
                            "split, device or augmentation", "another --work")
    # a folder from before variants kept its fit overrides in settings.json: they hold for its unnamed variant
    earlier = ({"teacher": args.teacher, "fit_overrides": shared["fit_overrides"], "weak_augment": "same"}
               if "fit_overrides" in shared and not args.variant else None)
    check_settings(args.work / f"settings-teacher{suffix}.json", {"teacher": args.teacher,
                                                                  "fit_overrides": args.overrides,
                                                                  "weak_augment": args.weak_augment},
                   "teacher, fit overrides or augmentation", "another --variant", earlier)
    data = benchmark_data(source, args.work / "data", parts)
    for name, ids in parts.items():
        (args.work / f"{name}_ids.txt").write_text("".join(f"{i}\n" for i in ids))
    seconds = {}

    n_both = args.labelled + len(parts["weak"])
    epochs_official = official_epochs(args, n_both)
    common = student_settings(args, data)
    official = TrainOptions(out=args.work / "run-official", labels="official", epochs=epochs_official, **common)
    results = {}

    def record(name: str, opts) -> None:
        t0 = time.perf_counter()
        summary = run(opts)
        seconds[f"train {name}"] = time.perf_counter() - t0
        results[name] = {"n_train": summary.n_train, "epochs": opts.epochs, "n_eval": summary.n_eval,
                         **{k: summary.metrics[k] for k in ("jaccard", "threshold_jaccard", "dice")},
                         "command": opts.command().replace(" --resume", "")}
        print(f"{name}: {json.dumps(results[name])}", flush=True)

    # the teacher: a bundle fitted on the labelled masks, the official-only student itself (a self-training
    # round: `wsm fit --prior-run`), whose maps are then as good as that student by construction, or a student on
    # four fifths of the labelled masks, calibrated on the fifth
    bundle, wsm_dir = args.work / f"bundle{suffix}", args.work / f"wsm{suffix}"
    prior_run = None
    if args.teacher == "student":
        record("official", official)
        prior_run = official.out
    elif args.teacher == "student-holdout":
        taught, calibrating = teacher_split(parts["labelled"], args.seed)
        teacher_data = benchmark_data(source, args.work / "data-teacher", {**parts, "labelled": taught})
        prior_run = args.work / "run-teacher"
        record("teacher student", TrainOptions(out=prior_run, labels="official", epochs=epochs_official,
                                               **{**common, "data": teacher_data}))   # a finished run is read back
        print(f"teacher: a student on {len(taught)} labelled masks; the other {len(calibrating)} calibrate",
              flush=True)
    t0 = time.perf_counter()
    if not (bundle / "provenance.json").exists():
        summary = fit(FitOptions(data=data, out=bundle, pipeline="default", device=args.device,
                                 overrides=tuple(args.overrides), exclude_ids=frozenset(parts["eval"]),
                                 prior_run=prior_run))
        print("\n".join(summary.lines()), flush=True)
    seconds["fit"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    gen = generate(GenerateOptions(out=wsm_dir, bundle=bundle, data=data, split="unlabeled", device=args.device))
    print("\n".join(gen.lines()), flush=True)
    seconds["generate"] = time.perf_counter() - t0
    weak_quality = weak_map_quality(source, wsm_dir, parts["weak"])
    print(f"weak maps vs the weak images' hidden masks: {json.dumps(weak_quality)}", flush=True)

    runs = {"official": official,
            "official+weak": TrainOptions(out=args.work / f"run-official+weak{suffix}", labels="both", wsm=wsm_dir,
                                          epochs=args.epochs, weak_augment=args.weak_augment, **common)}
    if args.epochs_finetune:
        runs["weak, then official (+init)"] = TrainOptions(
            out=args.work / f"run-finetune{suffix}", labels="official", init=str(runs["official+weak"].out),
            epochs=args.epochs_finetune, **{**common, "lr": args.lr / 2, "pretrained": False})  # init: every weight
    filters = (("official+confident weak", "official+confident", "confidence", "min_confidence",
                args.confident_fraction),
               ("official+predicted-good weak", "official+predicted", "predicted_jaccard", "min_predicted_jaccard",
                args.predicted_fraction))
    for name, folder, column, option, fraction in filters:
        if fraction:
            import pandas as pd

            threshold, kept = kept_by(pd.read_parquet(wsm_dir / "manifest.parquet"), column, parts["weak"], fraction)
            runs[name] = TrainOptions(out=args.work / f"run-{folder}{suffix}", labels="both", wsm=wsm_dir,
                                      epochs=max(1, round(args.epochs * n_both / (args.labelled + kept))),
                                      weak_augment=args.weak_augment, **{option: threshold}, **common)
    for name, opts in runs.items():
        if name not in results:
            record(name, opts)
    seconds["total"] = time.perf_counter() - started

    bench_cmd = shlex.join([sys.executable, *sys.argv])
    # the student as teacher is that student by construction; a fitted teacher is compared by its maps (on the
    # weak images) against the student (on the eval images): other images, so a difference within ~0.01 is noise
    teacher_fair = args.teacher == "student" or (weak_quality["jaccard_255_as_background"]
                                                 >= results["official"]["jaccard"])
    report = {"command": bench_cmd, "seed": args.seed, "eval_seed": args.eval_seed, "teacher": args.teacher,
              "variant": args.variant, "weak_augment": args.weak_augment, "fit_overrides": args.overrides,
              "augment_strength": args.augment_strength,
              "split": {k: len(v) for k, v in parts.items()}, "weak_map_quality": weak_quality,
              "teacher_at_least_as_good": teacher_fair, "results": results, "seconds": seconds,
              "fit_command": f"wsm fit --data {data} --out {bundle} --exclude {args.work / 'eval_ids.txt'}"
                             + (f" --prior-run {prior_run}" if prior_run else "")
                             + "".join(f" --set {o}" for o in args.overrides),
              "generate_command": f"wsm generate --data {data} --bundle {bundle} --split unlabeled --out {wsm_dir}"}
    (args.work / f"results{suffix}.json").write_text(json.dumps(report, indent=2))

    print(f"\ncommand: {bench_cmd}\nseed: {args.seed}; split by sha256(downstream:seed:isic_id): "
          f"{args.labelled} labelled, {args.weak} weak, {args.eval} eval (official masks, never trained on)")
    print(f"{'training labels':29s} {'images':>6s} {'epochs':>6s} {'Jaccard':>8s} {'thr.Jacc':>8s} {'Dice':>8s}")
    for name, r in results.items():
        print(f"{name:29s} {r['n_train']:6d} {r['epochs']:6d} {r['jaccard']:8.4f} {r['threshold_jaccard']:8.4f} "
              f"{r['dice']:8.4f}")
    for name, r in results.items():
        print(f"  {name}: {r['command']}")
    print(f"  maps: {report['fit_command']} && {report['generate_command']}")
    print(f"teacher: its maps score Jaccard {weak_quality['jaccard_255_as_background']:.4f} on the weak images' "
          f"hidden masks, the official-only student {results['official']['jaccard']:.4f} on the eval masks: "
          + ("the same network (self-training)" if args.teacher == "student" else
             "at least as good" if teacher_fair else "WEAKER than the student it is meant to help"))
    print("time: " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()))
    return report


if __name__ == "__main__":
    main()
