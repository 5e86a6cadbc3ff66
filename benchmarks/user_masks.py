"""Calibrating a bundle to a user's own masks: how many masks `wsm fit --from-bundle` needs.

    python benchmarks/user_masks.py [--bundle out/bench-quality/fold0/bundle-default] [--dataset PH2_HALF]
                                    [--image-type dermoscopic] [--work out/bench-user-masks] [--n 10,25,50]
                                    [--seeds 0,1,2] [--folds K] [--fine-tune] [--ceiling]
                                    [--set calibration.offsets_px=[0] ...] [--recipe-set box_prompt.enabled=true ...]

PH2's masks stand for a user's own protocol: they are drawn tighter than ISIC's, so maps from networks that learnt
ISIC's masks have a halo on them. The 100 ph2-half images and masks are imported into WORK/data with `wsm import`
(their pairs.csv names the files and diagnoses). For each N and seed, N of the 100 images are drawn
(``random.Random(seed).sample`` of the sorted ids); `wsm fit --from-bundle BUNDLE --exclude REST` keeps the bundle's
networks and recalibrates on those N masks alone; the maps of the other 100 - N images are generated with the new
bundle and scored against their masks with the official metrics (benchmarks/quality.py's score_pairs: 255 as
background, and left out weighted by coverage). The uncalibrated bundle's maps of the same images are scored beside
them, and how well each bundle's predicted_jaccard ranks the held-out maps (the calibrated bundle's quality model is
learnt on the N masks). One JSON line per (N, seed), then a table of the means over the seeds.
With --fine-tune the bundle's prior also trains further on the N masks (`wsm fit --from-bundle --fine-tune`). With
--folds K the images are dealt into K folds instead (by the first of --seeds), each fold's maps come from the bundle
recalibrated (or fine-tuned) on the other K - 1 folds, and every image is scored once: k-fold by image.

Any dataset laid out like ph2-half (images/, masks/, a pairs.csv with image_id, image and mask columns) can stand
for the user's: --dataset clinical-dermis --image-type "clinical: close-up" for a clinic's own photographs.
--recipe-set gives a generate-time setting (box_prompt, image_types, the inference-only keys) to the uncalibrated
maps and to every recalibration alike. Torch runs on one thread, generate on
one worker process. With --ceiling, first the most any calibration of these networks could reach: each image's
best candidate of the grid, chosen with its own mask.
"""
from __future__ import annotations

import argparse
import csv
import json
import random
import shlex
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from devdata import PH2_HALF  # noqa: E402
from quality import REPO, score_pairs  # noqa: E402

HEADLINE = "jaccard_255_as_background"
KEPT = (HEADLINE, "jaccard_255_left_out", "threshold_jaccard_255_as_background", "dice_255_as_background",
        "certain_coverage")
RANKING = ("spearman", "auroc_fail", "failing", "mean_kept", "mean_kept_oracle", "aurc", "aurc_oracle")


def dataset_masks(dataset: Path) -> dict[str, Path]:
    """image id -> its mask file, from the dataset's pairs.csv."""
    with open(dataset / "pairs.csv", newline="", encoding="utf8") as fh:
        return {row["image_id"]: dataset / row["mask"] for row in csv.DictReader(fh)}


def import_dataset(dataset: Path, data: Path, image_type: str) -> str:
    """The dataset imported into DATA as a user's own (masks in the train split, named after its folder); the
    equivalent command."""
    from archive_client.importer import import_folders

    if not (data / "manifest.parquet").exists():
        summary = import_folders(data, labels=dataset / "pairs.csv", challenge=dataset.name, progress=False,
                                 image_type=image_type)
        if not summary.ok:
            raise SystemExit("\n".join(summary.lines()))
    return shlex.join(["wsm", "import", "--labels", str(dataset / "pairs.csv"), "--challenge", dataset.name,
                       "--image-type", image_type, "--out", str(data)])


def draw(ids: list[str], n: int, seed: int) -> list[str]:
    """The N ids whose masks calibrate, for one seed."""
    return sorted(random.Random(seed).sample(sorted(ids), n))


def folds(ids: list[str], k: int, seed: int) -> list[list[str]]:
    """The ids dealt into ``k`` folds of (nearly) equal size, in an order shuffled by ``seed``."""
    shuffled = sorted(ids)
    random.Random(seed).shuffle(shuffled)
    return [sorted(shuffled[f::k]) for f in range(k)]


def draws(ids: list[str], args) -> list[tuple[str, list[str], list[str]]]:
    """(folder name, the ids that calibrate, the ids scored) of each recalibration the arguments ask for: N drawn
    per seed, or with --folds K every fold scored by the bundle calibrated on the other K - 1."""
    if args.folds:
        dealt = folds(ids, args.folds, int(args.seeds.split(",")[0]))
        return [(f"fold{f}-of{args.folds}", sorted(set(ids) - set(fold)), fold) for f, fold in enumerate(dealt)]
    out = []
    for n in (int(v) for v in args.n.split(",")):
        for seed in (int(v) for v in args.seeds.split(",")):
            chosen = draw(ids, n, seed)
            out.append((f"n{n}-seed{seed}", chosen, [i for i in ids if i not in set(chosen)]))
    return out


def maps_of(bundle: Path, data: Path, out: Path, ids: list[str],
            overrides: tuple[str, ...] = ()) -> dict[str, tuple[Path, float]]:
    """`wsm generate` of ``ids`` with ``bundle`` and generate-time ``overrides`` (once: an existing manifest is
    reused); id -> (map file, predicted Jaccard) of the maps whose mask the bundle was not fitted on."""
    import pandas as pd

    from wsm.generate import GenerateOptions, generate

    if not (out / "manifest.parquet").exists():
        generate(GenerateOptions(out=out, bundle=bundle, data=data, only_ids=frozenset(ids), workers=1,
                                 overrides=overrides, progress=False))
    manifest = pd.read_parquet(out / "manifest.parquet").set_index("isic_id")
    return {i: (out / manifest.loc[i, "path"], float(manifest.loc[i, "predicted_jaccard"])) for i in ids
            if i in manifest.index and manifest.loc[i, "status"] == "ok" and not manifest.loc[i, "mask_used_in_fit"]}


def halo(pairs: list[tuple[Path, Path]]) -> dict:
    """How the maps' lesion (the 1s) sits on the masks, medians over the images: area ratio (map / mask),
    sensitivity, precision. A halo: area ratio above 1 at a sensitivity near 1."""
    from wsm.io.images import read_mask
    from wsm.metrics import confusion_counts

    ratios, sensitivities, precisions = [], [], []
    for mask_path, map_path in pairs:
        truth, lesion = read_mask(mask_path) > 128, read_mask(map_path) == 1
        tp, fp, fn, _ = (int(v) for v in confusion_counts(truth, lesion))
        ratios.append((tp + fp) / max(1, tp + fn))
        sensitivities.append(tp / max(1, tp + fn))
        precisions.append(tp / max(1, tp + fp))
    return {name: round(statistics.median(values), 3) for name, values in
            (("area_ratio", ratios), ("sensitivity", sensitivities), ("precision", precisions))}


def scores(masks: dict[str, Path], maps: dict[str, tuple[Path, float]], ids: list[str]) -> dict:
    """The official metrics over ``ids`` (each must have a map: a missing one is an error, not a smaller n), the
    halo's medians and how well predicted_jaccard ranks the maps."""
    missing = sorted(set(ids) - set(maps))
    if missing:
        raise SystemExit(f"no honest map of {len(missing)} held-out images: {missing[:5]}")
    pairs = [(masks[i], maps[i][0]) for i in ids]
    result = score_pairs(pairs, {"predicted_jaccard": [maps[i][1] for i in ids]})
    ranking = {k: result["ranking"]["predicted_jaccard"].get(k) for k in RANKING}
    return {"n": result["n"], **{k: round(result[k], 4) for k in KEPT}, "halo": halo(pairs), "ranking": ranking}


def calibrate_on(bundle: Path, data: Path, folder: Path, chosen: list[str], rest: list[str],
                 overrides: tuple[str, ...] = (), fine_tune: bool = False) -> tuple[Path, dict, str]:
    """`wsm fit --from-bundle [--fine-tune]` on the ``chosen`` masks alone (--exclude the rest), with ``overrides``
    (--set): the new bundle, its calibration, and the equivalent command."""
    from wsm.fit import FitOptions, fit

    out, exclude = folder / "bundle", folder / "exclude.txt"
    folder.mkdir(parents=True, exist_ok=True)
    exclude.write_text("\n".join(rest) + "\n", encoding="utf8")
    if not (out / "provenance.json").exists():
        fit(FitOptions(data=data, out=out, from_bundle=bundle, exclude_ids=frozenset(rest), overrides=overrides,
                       fine_tune=fine_tune, progress=False))
    provenance = json.loads((out / "provenance.json").read_text(encoding="utf8"))
    assert sorted(provenance["calibration_mask_ids"]) == chosen and not set(provenance["fit_mask_ids"]) & set(rest)
    calibration = json.loads((out / "calibration.json").read_text(encoding="utf8"))
    chosen_values = {k: calibration[k] for k in ("prior_weight", "crf", "mask_threshold", "offset_px",
                                                  "lesion_threshold", "background_threshold", "jaccard")}
    command = shlex.join(["wsm", "fit", "--data", str(data), "--from-bundle", str(bundle), "--exclude", str(exclude),
                          *(["--fine-tune"] if fine_tune else []), "--out", str(out),
                          *[a for o in overrides for a in ("--set", o)]])
    return out, chosen_values, command


def calibration_ceiling(bundle: Path, data: Path, ids: list[str], overrides: tuple[str, ...] = ()) -> float:
    """The mean over ``ids`` of the best Jaccard any candidate of the bundle's calibration grid reaches on each image
    with that image's own mask (the refined mask at the working size): an oracle that no calibration shared by the
    images can beat."""
    from wsm.folders.bundle import load_bundle
    from wsm.fit.calibrate import calibrate
    from wsm.fit.driver import calibration_samples
    from wsm.selection import read_manifest, read_truth, with_truth

    loaded = load_bundle(bundle).with_inference_overrides(overrides)
    rows = with_truth(read_manifest(data), read_truth(data))
    samples = calibration_samples(loaded.recipes, data, rows[rows["isic_id"].isin(ids)],
                                  loaded.load_models(skip_unweighted=False), cascade=False)   # as fit calibrates
    return statistics.mean(max(point.jaccard for point in calibrate([s], loaded.recipe).grid) for s in samples)


def summary_table(rows: list[dict]) -> list[str]:
    """Markdown: per N, each seed's held-out Jaccard (255 as background) calibrated and uncalibrated, and the means."""
    lines = ["| N masks | held-out images | draws | calibrated, per draw | calibrated, mean | uncalibrated, mean | "
             "gain |", "|---|---|---|---|---|---|---|"]
    for n in sorted({r["n"] for r in rows}):
        mine = [r for r in rows if r["n"] == n]
        calibrated = [r["calibrated"][HEADLINE] for r in mine]
        uncalibrated = [r["uncalibrated"][HEADLINE] for r in mine]
        lines.append(f"| {n} | {mine[0]['calibrated']['n']} | {', '.join(r['draw'] for r in mine)} | "
                     f"{', '.join(f'{j:.4f}' for j in calibrated)} | {statistics.mean(calibrated):.4f} | "
                     f"{statistics.mean(uncalibrated):.4f} | "
                     f"{statistics.mean(calibrated) - statistics.mean(uncalibrated):+.4f} |")
    return lines


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=REPO / "out" / "bench-quality" / "fold0" / "bundle-default",
                        help="the fitted bundle whose networks are recalibrated")
    parser.add_argument("--dataset", "--ph2", type=Path, default=PH2_HALF,
                        help="the user's dataset: images, masks, pairs.csv (default ph2-half)")
    parser.add_argument("--image-type", default="dermoscopic",
                        help="the dataset's image type, which chooses its recipe (e.g. 'clinical: close-up')")
    parser.add_argument("--work", type=Path, default=REPO / "out" / "bench-user-masks")
    parser.add_argument("--n", default="10,25,50", help="how many masks calibrate (comma-separated)")
    parser.add_argument("--seeds", default="0,1,2", help="seeds of which images are drawn (comma-separated)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="a calibration setting for every recalibration, e.g. calibration.offsets_px=[0] "
                             "(repeatable; use another --work)")
    parser.add_argument("--recipe-set", dest="recipe_sets", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="a generate-time setting for the uncalibrated maps and every recalibration, e.g. "
                             "box_prompt.enabled=true (repeatable; use another --work)")
    parser.add_argument("--fine-tune", action="store_true",
                        help="`wsm fit --from-bundle --fine-tune`: the prior also trains further on the N masks")
    parser.add_argument("--folds", type=int, default=0, metavar="K",
                        help="instead of --n: k-fold by image (dealt by the first of --seeds), each fold's maps from "
                             "the bundle recalibrated on the other folds, every image scored once")
    parser.add_argument("--ceiling", action="store_true",
                        help="also the oracle ceiling of calibration: each image's best candidate of the grid for its "
                             "own mask, averaged over the 100 (at the working size)")
    args = parser.parse_args()
    if not args.fine_tune:
        torch.set_num_threads(1)        # training takes every core

    data, masks, recipe_sets = args.work / "data", dataset_masks(args.dataset), tuple(args.recipe_sets)
    print(json.dumps({"import": import_dataset(args.dataset, data, args.image_type), "images": len(masks)}),
          flush=True)
    ids = sorted(masks)
    source_maps = maps_of(args.bundle, data, args.work / "wsm-uncalibrated", ids, recipe_sets)
    print(json.dumps({"uncalibrated": str(args.bundle), "all": scores(masks, source_maps, ids)}), flush=True)
    if args.ceiling:
        print(json.dumps({"calibration_ceiling": round(calibration_ceiling(args.bundle, data, ids, recipe_sets), 4)}), flush=True)
    rows, pooled = [], {}
    for name, chosen, rest in draws(ids, args):
        folder = args.work / name
        started = time.perf_counter()
        bundle, calibration, command = calibrate_on(args.bundle, data, folder, chosen, rest,
                                                    recipe_sets + tuple(args.overrides), args.fine_tune)
        fitted = time.perf_counter()
        maps = maps_of(bundle, data, folder / "wsm", rest)
        pooled.update(maps)
        row = {"n": len(chosen), "draw": name, "calibrated": scores(masks, maps, rest),
               "uncalibrated": scores(masks, source_maps, rest), "calibration": calibration,
               "fit_s": round(fitted - started, 1), "generate_s": round(time.perf_counter() - fitted, 1),
               "command": command}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.folds:
        print(json.dumps({"folds": args.folds, "every image, each from its fold's bundle": scores(masks, pooled, ids),
                          "uncalibrated": scores(masks, source_maps, ids)}), flush=True)
    else:
        print("\n".join(summary_table(rows)), flush=True)


if __name__ == "__main__":
    main()
