"""The ISIC_WSM question on clinical photographs: does a segmentation student trained on official dermoscopic masks
get better on clinical photographs when wsm's maps of unlabelled clinical photographs are added?

    python benchmarks/clinical_downstream.py [--labelled 300] [--unlabelled -1] [--test -1] [--size 128]
        [--epochs 8] [--epochs-official N|same] [--min-predicted-jaccard X] [--augment-strength standard|strong]
        [--arch unet] [--encoder tf_efficientnet_lite0] [--no-train-pretrained] [--batch-size 16] [--lr 0.001]
        [--seed 0] [--device cpu] [--threads 0]
        [--bundle out/bench-quality/fold0/bundle-default] [--set section.key=value ...]
        [--source DEV_DATA] [--clinical SD198_DIR] [--dermis DERMIS_DIR] [--work out/bench-clinical-downstream]
        [--small]

Steps (each is reused when the script is run again with the same --work and settings):

1. WORK/data, built with ``archive_client.importer.import_folders`` from three public sets, each imported from a
   listing CSV (id, image, mask columns) that the script writes into WORK:
   (a) --labelled dev-set images (ISIC 2018 Task 1, 512 px centre crops) with their official masks, drawn in the
       order of sha256(downstream:seed:isic_id) from the whole dev set (benchmarks/downstream.py's draw), as split
       train, challenge isic2018, image_type dermoscopic. The draw does not look at which masks the teacher bundle
       was fitted on (nothing is scored on the dev set); results.json records how many of the drawn were;
   (b) the clinical-sd198-lesions photographs (--unlabelled of them, default all 174), no masks, image_type
       "clinical: close-up": the unlabelled clinical photographs;
   (c) the clinical-dermis photographs (DermIS atlas; --test of them, default all 69) with their masks as split
       test, challenge dermis, image_type "clinical: close-up": the only images that score, and nothing else.
2. ``wsm generate --split unlabeled`` with the teacher --bundle (an existing fitted bundle, e.g. the quality
   benchmark's fold-0 default): maps of the unlabelled clinical photographs into WORK/wsm, each photograph's recipe
   chosen by its image_type. The default --set gives "clinical: close-up" the packaged pipeline's settings for it
   (the LiteMedSAM box prompt, the framing check; generate-time settings), which a bundle fitted before the
   pipeline had them lacks. For information,
   the same bundle's maps of the test photographs (``wsm generate --split test``, into WORK/wsm-test, never
   trained on) are scored against their masks: the teacher's own Jaccard on clinical photographs.
3. two students, ``wsm train`` on WORK/data with the same architecture, encoder, size, seed and number of
   optimiser steps (the official-only run gets epochs x (labelled + maps) / labelled epochs, as
   benchmarks/downstream.py does): ``--labels official`` (the dermoscopic masks alone) and ``--labels both --maps
   WORK/wsm`` (the masks and the clinical maps, 255 ignored by the loss); both evaluated on the test split (mean over
   images of Jaccard, threshold Jaccard, Dice, as isic-challenge-scoring). With --min-predicted-jaccard X the second
   learns only from the maps predicted at least X (``wsm train --min-predicted-jaccard``; 0.65 leaves out the maps
   wsm flags), and the step count follows the maps kept.

One JSON line per run, a summary with the difference, and WORK/results.json (commands, seed, sizes, times).
``--small`` is a smoke test (24 labelled, 16 unlabelled, 12 test photographs, 64 px, a tiny student from random
weights, 2 epochs; the teacher bundle is the one given) that runs end to end in minutes.
A WORK folder belongs to one set of images and one teacher: the script refuses to reuse it with others.
"""
from __future__ import annotations

import argparse
import csv
import json
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from devdata import CLINICAL_DERMIS, DEV_ROOT, ISIC2018_CROPS  # noqa: E402
from downstream import check_settings, official_epochs, partition, rank_key, student_settings  # noqa: E402
from generality import fitted_on  # noqa: E402
from quality import REPO, score_fold  # noqa: E402

from wsm.train.options import AUGMENT_STRENGTH_CHOICES  # noqa: E402

CLINICAL_UNLABELLED = DEV_ROOT / "clinical-sd198-lesions"   # 174 clinical photographs, no masks, labels.csv
CLINICAL = "clinical: close-up"                              # the archive's image_type of a clinical close-up
DEFAULT_BUNDLE = REPO / "out" / "bench-quality" / "fold0" / "bundle-default"
TEST_CHALLENGE = "dermis"


def dev_pairs(source: Path) -> dict[str, tuple[Path, Path]]:
    """isic_id -> (image, mask) of the dev set, from its pairs.csv."""
    with open(source / "pairs.csv", newline="", encoding="utf8") as fh:
        return {row["isic_id"]: (source / row["image"], source / row["mask"]) for row in csv.DictReader(fh)}


def clinical_images(root: Path) -> dict[str, tuple[Path, None]]:
    """image_id -> (image, no mask) of the unlabelled clinical set, from its labels.csv."""
    with open(root / "labels.csv", newline="", encoding="utf8") as fh:
        return {row["image_id"]: (root / row["image"], None) for row in csv.DictReader(fh)}


def dermis_pairs(root: Path) -> dict[str, tuple[Path, Path]]:
    """image_id -> (image, mask) of the test photographs, from their pairs.csv."""
    with open(root / "pairs.csv", newline="", encoding="utf8") as fh:
        return {row["image_id"]: (root / row["image"], root / row["mask"]) for row in csv.DictReader(fh)}


def draw(ids: list[str], n: int, seed: int) -> list[str]:
    """``n`` of ``ids`` (all with n < 0) in the order of sha256(downstream:seed:id), sorted."""
    if n < 0:
        return sorted(ids)
    if n > len(ids):
        raise SystemExit(f"asked for {n} images; the set has {len(ids)}")
    return sorted(sorted(ids, key=lambda i: rank_key(i, seed))[:n])


def listing(path: Path, files: dict[str, tuple[Path, Path | None]], ids: list[str]) -> Path:
    """A labels CSV (image_id, image[, mask]; absolute paths) naming the files of ``ids`` for `wsm import`."""
    with_masks = any(files[i][1] is not None for i in ids)
    with open(path, "w", newline="", encoding="utf8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image_id", "image"] + (["mask"] if with_masks else []))
        for i in ids:
            image, mask = files[i]
            writer.writerow([i, str(image.resolve())] + ([str(mask.resolve())] if with_masks else []))
    return path


def build_data(work: Path, parts: dict[str, list[str]], files: dict[str, dict]) -> tuple[Path, list[str]]:
    """WORK/data from the three listings (see the module doc); the equivalent `wsm import` commands."""
    from archive_client.importer import import_folders
    from wsm.selection import read_manifest

    data = work / "data"
    imports = (("labelled", "isic2018", "train", "dermoscopic"), ("unlabelled", "sd198", "auto", CLINICAL),
               ("test", TEST_CHALLENGE, "test", CLINICAL))
    commands = []
    have = set(read_manifest(data)["isic_id"]) if (data / "manifest.parquet").exists() else set()
    for part, challenge, split, image_type in imports:
        labels = listing(work / f"{part}.csv", files[part], parts[part])
        commands.append(shlex.join(["wsm", "import", "--labels", str(labels), "--challenge", challenge,
                                    "--assign-split", split, "--image-type", image_type, "--link", "-o", str(data)]))
        if set(parts[part]) <= have:
            continue
        summary = import_folders(data, labels=labels, challenge=challenge, split=split, link=True, progress=False,
                                 image_type=image_type)
        if summary.images_rejected or summary.masks_rejected or summary.labels_rejected:
            raise SystemExit(f"import of the {part} images rejected some: images {summary.images_rejected[:3]}, "
                             f"masks {summary.masks_rejected[:3]}, rows {summary.labels_rejected[:3]}")
    return data, commands


def check_data(data: Path, parts: dict[str, list[str]]) -> dict[str, int]:
    """DATA holds exactly the images in play, with train masks on the labelled ones, test masks on the test ones and
    none on the unlabelled ones; their image types as imported."""
    from wsm.selection import read_manifest, read_truth, with_truth

    rows = with_truth(read_manifest(data), read_truth(data)).set_index("isic_id")
    expected = {"labelled": ("train", "dermoscopic"), "unlabelled": (None, CLINICAL), "test": ("test", CLINICAL)}
    if set(rows.index) != {i for ids in parts.values() for i in ids}:
        raise SystemExit(f"{data} holds other images than this run's; use another --work")
    for part, (split, image_type) in expected.items():
        got = rows.loc[parts[part]]
        has_mask = got["mask_file"].notna()
        splits = set(got.loc[has_mask, "split"]) if "split" in got.columns else set()
        if (split is None and has_mask.any()) or (split is not None and (not has_mask.all() or splits != {split})):
            raise SystemExit(f"{data}: the {part} images' masks are not as imported (split {split}): {splits}")
        if set(got["image_type"]) != {image_type}:
            raise SystemExit(f"{data}: the {part} images' image_type is {set(got['image_type'])}, not {image_type}")
    return {part: len(ids) for part, ids in parts.items()}


def generate_maps(bundle: Path, data: Path, out: Path, split: str, overrides: tuple[str, ...], device: str,
                  ) -> tuple[dict, str]:
    from wsm.generate import GenerateOptions, generate

    t0 = time.perf_counter()
    summary = generate(GenerateOptions(out=out, bundle=bundle, data=data, split=split, image_type=CLINICAL,
                                       overrides=overrides, device=device, workers=1, progress=False))
    print("\n".join(summary.lines()), flush=True)
    if not summary.ok:
        raise SystemExit(f"wsm generate --split {split} failed on {len(summary.failed)} images")
    command = shlex.join(["wsm", "generate", "--data", str(data), "--bundle", str(bundle), "--split", split,
                          "--image-type", CLINICAL, "--workers", "1", "--device", device, "--out", str(out),
                          *[a for o in overrides for a in ("--set", o)]])
    return {"images": summary.total, "maps": summary.done + summary.skipped, "failed": len(summary.failed),
            "skipped_types": dict(summary.skipped_types), "predicted_quality": summary.quality,
            "seconds": time.perf_counter() - t0}, command


def map_ids(wsm_dir: Path) -> list[str]:
    import pandas as pd

    manifest = pd.read_parquet(wsm_dir / "manifest.parquet")
    return sorted(manifest.loc[manifest["status"] == "ok", "isic_id"].astype(str))


def uncertain_fraction(wsm_dir: Path, ids: list[str]) -> float:
    """The mean fraction of 255 (uncertain) pixels in the maps of ``ids``."""
    import numpy as np
    import pandas as pd

    from wsm.io.images import read_mask

    manifest = pd.read_parquet(wsm_dir / "manifest.parquet").set_index("isic_id")
    return float(np.mean([np.mean(read_mask(wsm_dir / manifest.loc[i, "path"]) == 255) for i in ids]))


def clinical_overrides() -> list[str]:
    """The packaged default pipeline's settings for clinical close-ups as generate-time --set overrides, for a
    teacher bundle fitted before the pipeline had them (the box prompt, the framing check)."""
    from wsm.config.pipeline import load_pipeline

    table = load_pipeline("default")["image_types"]["overrides"][CLINICAL]
    return [f"image_types.overrides.{CLINICAL}.{section}.{key}={json.dumps(value)}"
            for section, settings in table.items() for key, value in settings.items()]


def kept_maps(wsm_dir: Path, ids: list[str], min_predicted: float | None) -> list[str]:
    """The maps of ``ids`` a student learns from: all, or those predicted at least ``min_predicted``."""
    if min_predicted is None:
        return ids
    import pandas as pd

    manifest = pd.read_parquet(wsm_dir / "manifest.parquet").set_index("isic_id")
    return [i for i in ids if manifest.loc[i, "predicted_jaccard"] >= min_predicted]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labelled", type=int, default=300, help="dev-set images whose official masks train")
    parser.add_argument("--unlabelled", type=int, default=-1,
                        help="unlabelled clinical photographs that get maps (-1, the default: all)")
    parser.add_argument("--test", type=int, default=-1, help="test photographs that score (-1, the default: all)")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=8, help="epochs of the run with the clinical maps")
    parser.add_argument("--epochs-official", default=None,
                        help="epochs of the official-only run: a number, 'same', or (default) equal optimiser steps")
    parser.add_argument("--min-predicted-jaccard", type=float, default=None, metavar="X",
                        help="the student with maps learns only from those predicted at least X (0.65: the maps "
                             "wsm does not flag; default: all maps)")
    parser.add_argument("--augment-strength", choices=AUGMENT_STRENGTH_CHOICES, default="standard",
                        help="augmentation of every image in both students (`wsm train --augment-strength`)")
    parser.add_argument("--arch", default="unet")
    parser.add_argument("--encoder", default="tf_efficientnet_lite0")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0, help="draws the labelled images and seeds the students")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers while training")
    parser.add_argument("--train-pretrained", action=argparse.BooleanOptionalAction, default=True,
                        help="ImageNet encoder for the `wsm train` runs")
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE, help="the teacher: a fitted bundle")
    parser.add_argument("--set", dest="overrides", action="append", default=None, metavar="SECTION.KEY=VALUE",
                        help="generate-time settings of the teacher (default: the packaged pipeline's settings for "
                             "clinical close-ups; giving any replaces them)")
    parser.add_argument("--source", type=Path, default=ISIC2018_CROPS, help="the dev set (with pairs.csv)")
    parser.add_argument("--clinical", type=Path, default=CLINICAL_UNLABELLED,
                        help="unlabelled clinical photographs (with labels.csv)")
    parser.add_argument("--dermis", type=Path, default=CLINICAL_DERMIS,
                        help="clinical photographs with masks, the test set (with pairs.csv)")
    parser.add_argument("--work", type=Path, default=REPO / "out" / "bench-clinical-downstream")
    parser.add_argument("--small", action="store_true",
                        help="smoke test: 24 labelled, 16 unlabelled, 12 test, 64 px, a tiny student, 2 epochs")
    args = parser.parse_args()
    args.overrides = clinical_overrides() if args.overrides is None else args.overrides
    if args.small:
        args.labelled, args.unlabelled, args.test, args.size, args.epochs = 24, 16, 12, 64, 2
        args.encoder, args.batch_size, args.lr, args.train_pretrained = "test_resnet", 8, 1e-2, False
        if args.work == parser.get_default("work"):
            args.work = REPO / "out" / "bench-clinical-downstream-small"
    run_point(args)


def run_point(args) -> dict:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from wsm.train import TrainOptions, run

    started = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    files = {"labelled": dev_pairs(args.source), "unlabelled": clinical_images(args.clinical),
             "test": dermis_pairs(args.dermis)}
    parts = {"labelled": partition(sorted(files["labelled"]), 0, args.labelled, 0, args.seed)["labelled"],
             "unlabelled": draw(list(files["unlabelled"]), args.unlabelled, args.seed),
             "test": draw(list(files["test"]), args.test, args.seed)}
    overrides = tuple(args.overrides)
    bundle = args.bundle.resolve()
    check_settings(args.work / "settings.json", {"source": str(args.source.resolve()),
                                                 "clinical": str(args.clinical.resolve()),
                                                 "dermis": str(args.dermis.resolve()), "parts": parts,
                                                 "bundle": str(bundle), "overrides": list(overrides),
                                                 "device": args.device},
                   "images, teacher or device", "another --work")
    teacher_fit = fitted_on(bundle)
    if teacher_fit & (set(parts["unlabelled"]) | set(parts["test"])):
        raise SystemExit(f"the teacher {bundle} was fitted on clinical photographs of this run")
    seconds = {}

    t0 = time.perf_counter()
    data, import_commands = build_data(args.work, parts, files)
    sizes = check_data(data, parts)
    seconds["import"] = time.perf_counter() - t0

    wsm_dir, test_dir = args.work / "wsm", args.work / "wsm-test"
    maps, generate_command = generate_maps(bundle, data, wsm_dir, "unlabeled", overrides, args.device)
    seconds["generate unlabelled"] = maps["seconds"]
    weak = map_ids(wsm_dir)
    if not set(weak) <= set(parts["unlabelled"]):
        raise SystemExit(f"{wsm_dir} holds maps of other images than the unlabelled photographs")
    maps["uncertain_fraction"] = uncertain_fraction(wsm_dir, weak)
    print(f"maps of the unlabelled clinical photographs: {json.dumps(maps)}", flush=True)
    test_maps, test_command = generate_maps(bundle, data, test_dir, "test", overrides, args.device)
    seconds["generate test (teacher's quality)"] = test_maps["seconds"]
    teacher = score_fold(data, test_dir, parts["test"])
    teacher.pop("ranking", None)
    print(f"teacher's maps vs the test photographs' masks: {json.dumps(teacher)}", flush=True)

    kept = kept_maps(wsm_dir, weak, args.min_predicted_jaccard)
    maps["kept"] = len(kept)
    epochs_official = official_epochs(args, args.labelled + len(kept))
    common = {**student_settings(args, data), "progress": False}
    runs = {"official": TrainOptions(out=args.work / "run-official", labels="official", epochs=epochs_official,
                                     **common),
            "official+clinical maps": TrainOptions(out=args.work / "run-official+clinical", labels="both",
                                                   wsm=wsm_dir, epochs=args.epochs,
                                                   min_predicted_jaccard=args.min_predicted_jaccard, **common)}
    results = {}
    for name, opts in runs.items():
        t0 = time.perf_counter()
        summary = run(opts)
        seconds[f"train {name}"] = time.perf_counter() - t0
        results[name] = {"n_train": summary.n_train, "epochs": opts.epochs, "n_eval": summary.n_eval,
                         **{k: summary.metrics[k] for k in ("jaccard", "threshold_jaccard", "dice")},
                         "seconds": round(seconds[f"train {name}"], 1),
                         "command": opts.command().replace(" --resume", "")}
        print(json.dumps({"run": name, **results[name]}), flush=True)
    seconds["total"] = time.perf_counter() - started

    gain = results["official+clinical maps"]["jaccard"] - results["official"]["jaccard"]
    bench_cmd = shlex.join([sys.executable, *sys.argv])
    report = {"command": bench_cmd, "seed": args.seed, "small": args.small,
              "draw": "labelled: the first by sha256(downstream:seed:isic_id) of the whole dev set; unlabelled and "
                      "test: all, or the first by the same hash of their ids",
              "sizes": {**sizes, "maps": len(weak), "maps_kept": len(kept), "size_px": args.size},
              "min_predicted_jaccard": args.min_predicted_jaccard, "augment_strength": args.augment_strength,
              "labelled_in_teacher_fit": len(set(parts["labelled"]) & teacher_fit),
              "teacher": {"bundle": str(bundle), "generate_overrides": list(overrides),
                          "maps_unlabelled": maps, "test_quality": teacher},
              "results": results, "gain_jaccard": gain, "target_gain": 0.10, "target_met": gain >= 0.10,
              "commands": {"import": import_commands, "generate": generate_command,
                           "generate_test": test_command, **{n: r["command"] for n, r in results.items()}},
              "seconds": seconds}
    (args.work / "results.json").write_text(json.dumps(report, indent=2))

    print(f"\ncommand: {bench_cmd}\nseed {args.seed}: {sizes['labelled']} dermoscopic masks "
          f"({report['labelled_in_teacher_fit']} of them among the teacher's fitting masks), {len(kept)} of the "
          f"{len(weak)} maps of "
          f"{sizes['unlabelled']} unlabelled clinical photographs, {sizes['test']} test photographs "
          f"(masks, never trained on)")
    print(f"{'training labels':24s} {'images':>6s} {'epochs':>6s} {'Jaccard':>8s} {'thr.Jacc':>8s} {'Dice':>8s}")
    for name, r in results.items():
        print(f"{name:24s} {r['n_train']:6d} {r['epochs']:6d} {r['jaccard']:8.4f} {r['threshold_jaccard']:8.4f} "
              f"{r['dice']:8.4f}")
    print(f"gain of the clinical maps: {gain:+.4f} Jaccard on the test photographs (target +0.10: "
          f"{'met' if gain >= 0.10 else 'not met'})")
    print(f"teacher's own maps on the test photographs: Jaccard {teacher['jaccard_255_as_background']:.4f} "
          f"(255 as background; {teacher['jaccard_255_left_out']:.4f} left out)")
    print("time: " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()))
    return report


if __name__ == "__main__":
    main()
