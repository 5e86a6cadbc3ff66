"""Map quality by k-fold on the dev set: fit on k-1 folds, generate and score the held-out fold.

    python benchmarks/quality.py [--folds 1] [--k 5] [--seed 0] [--pipelines classic,cam-only,default]
                                 [--source DEV_DATA] [--work out/bench-quality]
                                 [--set section.key=value ...] [--no-bare] [--bar]

The folds are drawn by isic_id (a hash with the seed), so no image of the scored fold, nor its mask, is used by
`fit`; scores use the official ISIC metrics (wsm.metrics, equal to isic-challenge-scoring) with 255 counted as
background and left out (left out: weighted by coverage, wsm.metrics.LEFT_OUT_DEFINITION, so abstaining never
pays), plus the certain-pixel coverage. `--folds 1` (the quick mode) runs the first fold only.
The equivalent commands are printed with the numbers. After the default pipeline, a "bare prior" row scores its
bundle's prior alone as a user would run it without wsm (benchmarks/speed.py's bare loop: one forward at the
prior's size, threshold 0.5, no TTA, calibration or refinement) on the same held-out images. With --bar, a "bar" row
scores what a user would train instead of running wsm: `wsm train`'s U-Net with the packaged ImageNet Lite0 encoder,
BCE + Dice, flips, 192 px, 6 epochs, on the same fitting masks (its fit s is its training time).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from devdata import ISIC2018_CROPS

sys.path.insert(0, str(Path(__file__).resolve().parent))   # benchmarks/speed.py, for the bare loop

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = ISIC2018_CROPS


def fold_of(isic_id: str, k: int, seed: int) -> int:
    return int.from_bytes(hashlib.sha256(f"fold:{seed}:{isic_id}".encode()).digest()[:8], "big") % k


def import_source(source: Path, data: Path) -> None:
    from archive_client.importer import import_folders

    if not (data / "manifest.parquet").exists():
        labels = source / "pairs.csv" if (source / "pairs.csv").exists() else None
        import_folders(data, images=source / "images", masks=source / "masks", labels=labels,
                       challenge="isic2018", split="train", progress=True)


CLASSIFIER_SHARING = ("default", "cam-only")   # identical [classes], [classifier] and seed: one training serves both


def reuse_classifier(fold_dir: Path, name: str, bundle: Path) -> None:
    """Copy a finished classifier checkpoint of the other recipe, so `fit` finds it done instead of retraining."""
    if name not in CLASSIFIER_SHARING:
        return
    for other in CLASSIFIER_SHARING:
        for theirs in (fold_dir / f"bundle-{other}" / "work").glob("classifier-*"):
            mine = bundle / "work" / theirs.name        # the folder name is a hash of the classifier's settings
            if other != name and (theirs / "model.safetensors").exists() and not mine.exists():
                shutil.copytree(theirs, mine)


def score_fold(data: Path, wsm_dir: Path, ids: list[str]) -> dict:
    import pandas as pd

    from wsm.selection import read_truth

    truth = read_truth(data).set_index("isic_id")
    manifest = pd.read_parquet(wsm_dir / "manifest.parquet").set_index("isic_id")
    pairs, scored, missing = [], [], 0
    for isic_id in ids:
        row = manifest.loc[isic_id] if isic_id in manifest.index else None
        if row is None or row["status"] != "ok":
            missing += 1
            continue
        pairs.append((data / truth.loc[isic_id, "mask_file"], wsm_dir / row["path"]))
        scored.append(isic_id)
    return {**score_pairs(pairs, manifest_rankers(manifest, scored)), "missing": missing}


RANKERS = ("predicted_jaccard", "confidence")    # the WSM manifest's per-map scores of how good a map is


def manifest_rankers(manifest, ids: list[str]) -> dict[str, list[float]]:
    """The WSM manifest's ranking scores of ``ids`` (those of its columns it has)."""
    return {name: manifest.loc[ids, name].astype(float).tolist() for name in RANKERS if name in manifest.columns}


def score_bare_prior(data: Path, bundle: Path, ids: list[str], out: Path) -> dict:
    """What a user gets from the bundle's prior alone, as benchmarks/speed.py's bare loop runs it (decode, resize,
    one forward, threshold 0.5, resize back): the baseline that TTA, calibration and refinement must beat."""
    from speed import bare_loop_seconds

    from wsm.selection import read_manifest, read_truth

    files = read_manifest(data).set_index("isic_id").loc[ids, "file"]
    started = time.perf_counter()
    bare_loop_seconds(bundle, [data / f for f in files], out)
    truth = read_truth(data).set_index("isic_id")
    pairs = [(data / truth.loc[i, "mask_file"], out / f"{Path(files[i]).stem}.png") for i in ids]
    return {"generate_s": round(time.perf_counter() - started), **score_pairs(pairs), "missing": 0}


# The plain alternative a user would train instead of running wsm: a U-Net with the packaged ImageNet Lite0 encoder,
# BCE + Dice, flips, 192 px, on the official masks alone (`wsm train`'s defaults otherwise).
BAR = {"arch": "unet", "encoder": "tf_efficientnet_lite0", "size": 192, "loss": "bce+dice", "epochs": 6,
       "batch_size": 16}


def score_bar(data: Path, fold_dir: Path, held_out: list[str], seed: int) -> dict:
    """`wsm train` (BAR) on every fitting mask of the fold, scored on the held-out fold's official masks."""
    from downstream import benchmark_data

    from wsm.selection import read_truth
    from wsm.train import TrainOptions, run

    fitting = sorted(set(read_truth(data)["isic_id"]) - set(held_out))
    bar_data = benchmark_data(data, fold_dir / "bar-data", {"eval": held_out, "labelled": fitting, "weak": []})
    opts = TrainOptions(data=bar_data, out=fold_dir / "bar-run", labels="official", split_train="train",
                        eval_split="test", seed=seed, resume=True, **BAR)
    summary = run(opts)
    metrics = summary.metrics   # binary maps: no uncertain pixel, so 255 as background = 255 left out
    print(f"  reproduce: {opts.command().replace(' --resume', '')}", flush=True)
    return {"fit_s": round(summary.seconds.get("train", 0)), "generate_s": round(summary.seconds.get("eval", 0)),
            "n": summary.n_eval, "jaccard_255_as_background": metrics["jaccard"],
            "threshold_jaccard_255_as_background": metrics["threshold_jaccard"],
            "dice_255_as_background": metrics["dice"], "jaccard_255_left_out": metrics["jaccard"],
            "threshold_jaccard_255_left_out": metrics["threshold_jaccard"], "dice_255_left_out": metrics["dice"],
            "certain_coverage": 1.0, "missing": 0}


def score_pairs(pairs: list[tuple[Path, Path]], rankers: dict[str, list[float]] | None = None) -> dict:
    """Official metrics over (official mask, ISIC_WSM map) files, with 255 as background and left out; with
    ``rankers`` (a name -> one score per pair, e.g. the manifest's predicted_jaccard and confidence), how well each
    ranks the maps by their Jaccard (wsm.report.scoring.quality_assessment: Spearman, AUROC for the maps under
    0.65, mean Jaccard of the 80% ranked best, AURC beside a perfect and a random ranking's)."""
    from wsm.io.images import read_mask
    from wsm.metrics import aggregate, score_label_map
    from wsm.report.scoring import quality_assessment

    as_background, left_out = [], []
    for mask_path, map_path in pairs:
        mask, label_map = read_mask(mask_path), read_mask(map_path)
        as_background.append(score_label_map(mask, label_map, uncertain="background"))
        left_out.append(score_label_map(mask, label_map, uncertain="ignore"))
    bg, ig = aggregate(as_background), aggregate(left_out)
    jaccards = [r["jaccard"] for r in as_background]
    ranking = {}
    for name, scores in (rankers or {}).items():
        assessed = quality_assessment(scores, jaccards) or {}
        ranking[name] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in assessed.items()
                         if not k.startswith("curve")}
    return {"n": len(as_background), **({"ranking": ranking} if ranking else {}),
            "jaccard_255_as_background": bg["jaccard"], "threshold_jaccard_255_as_background": bg["threshold_jaccard"],
            "dice_255_as_background": bg["dice"], "jaccard_255_left_out": ig["jaccard"],
            "threshold_jaccard_255_left_out": ig["threshold_jaccard"], "dice_255_left_out": ig["dice"],
            "certain_coverage": 1 - float(np.mean([r["uncertain_fraction"] for r in left_out]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--folds", type=int, default=1, help="how many of the k folds to run (1: quick mode)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pipelines", default="classic,cam-only,default")
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--work", type=Path, default=REPO / "out" / "bench-quality")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--limit", type=int, default=0, help="score at most N held-out images per fold")
    parser.add_argument("--no-bare", dest="bare", action="store_false",
                        help="skip the bare-prior row (the default bundle's prior alone: one forward, threshold 0.5)")
    parser.add_argument("--bar", action="store_true",
                        help="add the plain alternative's row: `wsm train`'s U-Net with the packaged Lite0 encoder, "
                             "192 px, BCE+Dice, 6 epochs, on the fold's fitting masks alone (~30 min on 2 cores)")
    args = parser.parse_args()

    from wsm.fit import FitOptions, fit
    from wsm.generate import GenerateOptions, generate
    from wsm.selection import read_manifest

    data = args.work / "data"
    import_source(args.source, data)
    all_ids = read_manifest(data)["isic_id"].tolist()
    results = []
    for fold in range(args.folds):
        held_out = sorted(i for i in all_ids if fold_of(i, args.k, args.seed) == fold)
        if args.limit:
            held_out = held_out[: args.limit]
        fold_dir = args.work / f"fold{fold}"
        fold_dir.mkdir(parents=True, exist_ok=True)
        (fold_dir / "held_out.txt").write_text("\n".join(held_out) + "\n")
        for name in args.pipelines.split(","):
            bundle, out = fold_dir / f"bundle-{name}", fold_dir / f"wsm-{name}"
            reuse_classifier(fold_dir, name, bundle)
            started = time.perf_counter()
            fit_summary = fit(FitOptions(data=data, out=bundle, pipeline=name, overrides=tuple(args.overrides),
                                         exclude_ids=frozenset(held_out)))
            fit_s = time.perf_counter() - started
            started = time.perf_counter()
            generate(GenerateOptions(out=out, bundle=bundle, data=data, split="all", only_ids=frozenset(held_out)))
            gen_s = time.perf_counter() - started
            scores = score_fold(data, out, held_out)
            row = {"pipeline": name, "fold": fold, "k": args.k, "seed": args.seed, "set": args.overrides,
                   "fit_s": round(fit_s), "generate_s": round(gen_s), **scores,
                   "calibration": getattr(fit_summary.calibration, "__dict__", None) and
                   {k: v for k, v in fit_summary.calibration.__dict__.items() if k != "grid"}}
            results.append(row)
            (args.work / "results.json").write_text(json.dumps(results, indent=2, default=str))
            print(json.dumps(row, default=str), flush=True)
            sets = "".join(f" --set {text}" for text in args.overrides)
            print(f"  reproduce: wsm fit --data DATA --out {bundle} --pipeline {name}{sets} --exclude "
                  f"{fold_dir / 'held_out.txt'} && wsm generate --data DATA --bundle {bundle} --out {out} "
                  f"--only {fold_dir / 'held_out.txt'}", flush=True)
            if name == "default" and args.bare:
                row = {"pipeline": "bare prior", "fold": fold, "k": args.k, "seed": args.seed, "fit_s": 0,
                       **score_bare_prior(data, bundle, held_out, fold_dir / "bare-prior")}
                results.append(row)
                (args.work / "results.json").write_text(json.dumps(results, indent=2, default=str))
                print(json.dumps(row, default=str), flush=True)
        if args.bar:
            row = {"pipeline": "bar", "fold": fold, "k": args.k, "seed": args.seed,
                   **score_bar(data, fold_dir, held_out, args.seed)}
            results.append(row)
            (args.work / "results.json").write_text(json.dumps(results, indent=2, default=str))
            print(json.dumps(row, default=str), flush=True)
    print(f"\n{'pipeline':10s} {'fold':>4s} {'n':>5s} {'J(255=bg)':>10s} {'J(255 out)':>10s} {'TJ(255=bg)':>10s} "
          f"{'coverage':>9s} {'fit s':>7s} {'gen s':>6s}")
    for r in results:
        print(f"{r['pipeline']:10s} {r['fold']:4d} {r['n']:5d} {r['jaccard_255_as_background']:10.4f} "
              f"{r['jaccard_255_left_out']:10.4f} {r['threshold_jaccard_255_as_background']:10.4f} "
              f"{r['certain_coverage']:9.3f} {r['fit_s']:7d} {r['generate_s']:6d}")


if __name__ == "__main__":
    main()
