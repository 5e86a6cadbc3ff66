"""How maps hold up away from the dev set's 512 px centre crops: whole photographs at full resolution, and the
held-out crops placed in 3:2 canvases as whole archive photographs are, or under colour casts; the held-out crops
themselves beside them.

    python benchmarks/generality.py --bundle out/bench-quality/fold0/bundle-default [--bundle OTHER ...]
                                    [--held-out out/bench-quality/fold0/held_out.txt] [--work out/bench-generality]
                                    [--set prior.flip_tta=true ...] [--bare]

- crops: the held-out 512x512 crops of the dev data as they are (the quality benchmark's fold, same maps).
- full-res: the 8 ISIC 2017 validation images of --fullres DIR (2000x3008 to 2848x4288),
  none of which is in the dev set; an image whose mask the bundle was fitted on would be left out and counted.
- wide: each held-out 512x512 crop of the dev data (--source) centred in a 768x512 canvas filled with
  the mean colour of the crop's outer ring (mask padded with background). The networks see the whole canvas squashed
  to their square, as they see every 3:2 archive photograph; the dev set's crops never show them that.
- small: each held-out crop in a 1536x1024 canvas (3 x as wide, 2 x as tall) filled the same way, at a place drawn
  from its id: a small, off-centre lesion in a whole frame, which the networks see at a sixth of the crop's scale.
- recoloured: each held-out crop as another camera or light might render it: per-channel gains in [0.75, 1.25]
  and a gamma in [0.8, 1.25], drawn from its id (colour casts the dev set's clinics rarely show).
- ph2-half: 100 PH2 dermoscopic whole frames from another clinic and device (--ph2), never fitted on.
- clinical-dermis: 69 clinical photographs of the DermIS atlas (--dermis), never fitted on.
Every set also says how well the WSM manifest's predicted_jaccard and confidence rank its maps (Spearman, AUROC
for the maps under 0.65, the mean Jaccard of the 80% ranked best, AURC beside a perfect and a random ranking's).
Scores are the official ISIC metrics (benchmarks/quality.py's score_pairs), with 255 as background and left out
(weighted by coverage: wsm.metrics.LEFT_OUT_DEFINITION). With --bare, each set is also scored with the
bundle's prior alone, as benchmarks/speed.py's bare loop runs it (one forward, threshold 0.5): what calibration and
refinement add on that kind of image.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from devdata import CLINICAL_DERMIS, ISIC2017_FULLRES, PH2_HALF  # noqa: E402
from quality import DEFAULT_SOURCE, REPO, manifest_rankers, score_pairs  # noqa: E402

RING = 8  # pixels of the crop's border whose mean colour fills the canvas
SETS = {"crops": "dermoscopic", "full-res": "dermoscopic", "wide": "dermoscopic", "small": "dermoscopic",
        "recoloured": "dermoscopic",
        "ph2-half": "dermoscopic", "clinical-dermis": "clinical: close-up"}   # kind of image -> its image_type


def mask_path(source: Path, isic_id: str) -> Path:
    return source / "masks" / f"{isic_id}_segmentation.png"


def paired_set(root: Path) -> tuple[list[str], Callable[[Path, str], Path]]:
    """A dataset laid out with a pairs.csv (image, mask columns): the ids `wsm generate -i` gives its images (their
    file names' stems) and where each one's mask is."""
    import csv

    with open(root / "pairs.csv", newline="", encoding="utf8") as fh:
        masks = {Path(row["image"]).stem: root / row["mask"] for row in csv.DictReader(fh)}
    return sorted(masks), lambda _images, image_id: masks[image_id]


def place(image: np.ndarray, mask: np.ndarray, wider: float, taller: float = 1.0,
          where: tuple[float, float] = (0.5, 0.5)) -> tuple[np.ndarray, np.ndarray]:
    """The image in a canvas ``wider`` x as wide and ``taller`` x as tall, filled with its outer ring's mean colour,
    its top-left corner at ``where`` (fractions of the room left each way; the centre by default)."""
    height, width = mask.shape
    ring = np.concatenate([image[:RING].reshape(-1, 3), image[-RING:].reshape(-1, 3),
                           image[:, :RING].reshape(-1, 3), image[:, -RING:].reshape(-1, 3)])
    canvas_height, canvas_width = round(height * taller), round(width * wider)
    canvas = np.empty((canvas_height, canvas_width, 3), np.uint8)
    canvas[:] = ring.mean(axis=0).round().astype(np.uint8)
    placed_mask = np.zeros((canvas_height, canvas_width), np.uint8)
    left, top = int(where[0] * (canvas_width - width)), int(where[1] * (canvas_height - height))
    canvas[top:top + height, left:left + width] = image
    placed_mask[top:top + height, left:left + width] = mask
    return canvas, placed_mask


def widen(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The image centred in a 3:2 canvas (1.5 x as wide)."""
    return place(image, mask, 1.5)


def shrink_in_frame(image: np.ndarray, mask: np.ndarray, isic_id: str) -> tuple[np.ndarray, np.ndarray]:
    """The image in a canvas 3 x as wide and 2 x as tall, at a place drawn from its id: a small, off-centre lesion
    in a whole frame."""
    return place(image, mask, 3.0, 2.0, tuple(_id_rng("small", isic_id).uniform(0, 1, 2)))


def _id_rng(purpose: str, isic_id: str) -> np.random.Generator:
    return np.random.default_rng(int.from_bytes(hashlib.sha256(f"{purpose}:{isic_id}".encode()).digest()[:8], "big"))


def recolour(image: np.ndarray, isic_id: str) -> np.ndarray:
    """The image under another camera's colour response: per-channel gains in [0.75, 1.25] and a gamma in
    [0.8, 1.25], drawn from the id (the same every run)."""
    rng = _id_rng("recolour", isic_id)
    gains, gamma = rng.uniform(0.75, 1.25, 3), rng.uniform(0.8, 1.25)
    return np.clip(np.power(image / 255.0, gamma) * gains * 255.0, 0, 255).round().astype(np.uint8)


def make_set(ids: list[str], source: Path, dest: Path,
             change: Callable[[np.ndarray, np.ndarray, str], tuple[np.ndarray, np.ndarray]]) -> None:
    """DEST/images and DEST/masks: each source image and mask changed by ``change(image, mask, isic_id)``."""
    from PIL import Image

    from wsm.io.images import read_image, read_mask

    (dest / "images").mkdir(parents=True, exist_ok=True)
    (dest / "masks").mkdir(parents=True, exist_ok=True)
    for isic_id in ids:
        if mask_path(dest, isic_id).exists():
            continue
        image, mask = change(read_image(source / "images" / f"{isic_id}.jpg"), read_mask(mask_path(source, isic_id)),
                             isic_id)
        Image.fromarray(image).save(dest / "images" / f"{isic_id}.jpg", quality=95)
        Image.fromarray(mask).save(mask_path(dest, isic_id))


def fitted_on(bundle: Path) -> set[str]:
    from wsm.folders.bundle import load_bundle

    return set(load_bundle(bundle).provenance.get("fit_mask_ids", []))


def score_bare_prior(bundle: Path, images: Path, out: Path, ids: list[str],
                     masks: Callable[[Path, str], Path] = None) -> dict:
    """The bundle's prior alone, as a user would run it without wsm (benchmarks/speed.py's bare loop: one forward,
    threshold 0.5), on ``ids`` of a folder of images whose mask it was not fitted on."""
    from speed import bare_loop_seconds

    masks = masks or mask_path
    fit_ids = fitted_on(bundle)
    scored = [i for i in ids if i not in fit_ids]
    bare_loop_seconds(bundle, [images / "images" / f"{i}.jpg" for i in scored], out)
    return {**score_pairs([(masks(images, i), out / f"{i}.png") for i in scored]),
            "left_out_fitted_on": len(ids) - len(scored), "failed": 0}


def score_images_folder(bundle: Path, images: Path, out: Path, ids: list[str],
                        overrides: tuple[str, ...] = (), masks: Callable[[Path, str], Path] = None,
                        image_type: str | None = None) -> dict:
    """Generate maps for ``ids`` of a folder of images of ``image_type`` with `bundle` (and generate-time
    ``overrides``), score those whose mask it was not fitted on."""
    import pandas as pd

    from wsm.generate import GenerateOptions, generate

    masks = masks or mask_path
    fit_ids = fitted_on(bundle)
    generate(GenerateOptions(out=out, bundle=bundle, images=images / "images", only_ids=frozenset(ids),
                             overrides=overrides, progress=False, image_type=image_type))
    manifest = pd.read_parquet(out / "manifest.parquet").set_index("isic_id")
    made = set(manifest.index[manifest["status"] == "ok"])
    scored = [i for i in ids if i not in fit_ids and i in made]
    return {**score_pairs([(masks(images, i), out / manifest.loc[i, "path"]) for i in scored],
                          manifest_rankers(manifest, scored)),
            "left_out_fitted_on": len([i for i in ids if i in fit_ids]),
            "failed": len([i for i in ids if i not in fit_ids and i not in made])}


def bundle_tag(bundle: Path, overrides: tuple[str, ...] = ()) -> str:
    """A short name for what makes a bundle's maps (its resolved pipeline, weights and generate-time settings), for
    output folders."""
    from wsm.config.pipeline import pipeline_hash
    from wsm.folders.bundle import load_bundle

    loaded = load_bundle(bundle)
    maker = pipeline_hash(loaded.resolved) + repr(sorted(loaded.model_hashes().items()))
    maker += repr(overrides) if overrides else ""   # no overrides: the tags of earlier runs stay the same
    return hashlib.sha256(maker.encode()).hexdigest()[:10]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, action="append", required=True, help="a fitted bundle (repeatable)")
    parser.add_argument("--held-out", type=Path, default=REPO / "out" / "bench-quality" / "fold0" / "held_out.txt",
                        help="ids of dev-set images the bundles were not fitted on (the quality benchmark's fold)")
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="the dev data (512 px crops)")
    parser.add_argument("--fullres", type=Path, default=ISIC2017_FULLRES,
                        help="full-resolution images and masks: images/ISIC_x.jpg, masks/ISIC_x_segmentation.png")
    parser.add_argument("--ph2", type=Path, default=PH2_HALF,
                        help="PH2 whole frames from another clinic, with pairs.csv (skipped when absent)")
    parser.add_argument("--dermis", type=Path, default=CLINICAL_DERMIS,
                        help="clinical photographs with masks, with pairs.csv (skipped when absent)")
    parser.add_argument("--work", type=Path, default=REPO / "out" / "bench-generality")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="a generate-time setting for every bundle, e.g. prior.flip_tta=true (repeatable)")
    parser.add_argument("--bare", action="store_true",
                        help="also score each bundle's prior alone (one forward, threshold 0.5) on every set")
    parser.add_argument("--sets", type=lambda text: text.split(","), default=list(SETS),
                        help=f"which sets, comma-separated (default: all of {','.join(SETS)})")
    args = parser.parse_args()
    overrides = tuple(args.overrides)

    fullres_ids = sorted(p.stem for p in (args.fullres / "images").glob("*.jpg"))
    held_out = args.held_out.read_text().split()
    made = {"wide": lambda image, mask, _: widen(image, mask), "small": shrink_in_frame,
            "recoloured": lambda image, mask, isic_id: (recolour(image, isic_id), mask)}
    sets = [("crops", args.source, held_out, None), ("full-res", args.fullres, fullres_ids, None)]
    for test, change in made.items():
        if test in args.sets:
            make_set(held_out, args.source, args.work / test, change)
            sets.append((test, args.work / test, held_out, None))
    for test, root in (("ph2-half", args.ph2), ("clinical-dermis", args.dermis)):
        if (root / "pairs.csv").exists():
            sets.append((test, root, *paired_set(root)))
    table = []
    for bundle in args.bundle:
        name = f"{bundle.name}-{bundle_tag(bundle, overrides)}"
        for test, images, ids, masks in (s for s in sets if s[0] in args.sets):
            scores = score_images_folder(bundle, images, args.work / f"wsm-{test}-{name}", ids, overrides, masks,
                                         SETS[test])
            print(json.dumps({"bundle": str(bundle), "test": test, "set": list(overrides), **scores}), flush=True)
            table.append((test, bundle.name, scores))
            if args.bare:
                scores = score_bare_prior(bundle, images, args.work / f"bare-{test}-{name}", ids, masks)
                print(json.dumps({"bundle": str(bundle), "test": f"{test}, bare prior", **scores}), flush=True)
                table.append((test, f"{bundle.name}, bare prior", scores))
    print_table(table)


def print_table(table: list[tuple[str, str, dict]]) -> None:
    """One line per kind of image and maker: n, mean Jaccard (255 as background) and its spread."""
    print(f"{'kind of image':<18} {'maps':<34} {'n':>4} {'Jaccard':>8}")
    for test, maker, scores in sorted(table, key=lambda row: list(SETS).index(row[0])):
        print(f"{test:<18} {maker:<34} {scores['n']:>4} {scores['jaccard_255_as_background']:>8.4f}")


if __name__ == "__main__":
    main()
