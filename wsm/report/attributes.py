"""Dermoscopic-attribute maps (ISIC 2018 Task 2): the challenge's scoring rule and `wsm report --attributes`.

Maps, as the challenge took them: one 8-bit PNG per image and attribute, ``ISIC_x_attribute_<name>.png``, 0 / 255
(> 128 is the attribute), the image's size; the truths are DATA's attribute masks (``wsm download --challenge
isic2018 --task attributes`` or ``wsm import --attributes``, listed in DATA/attribute_manifest.parquet).

The rule implemented is the one ISIC 2018 Task 2 was ranked by (isic-challenge-scoring, ``task2.score``): for every
image and attribute the confusion counts (TP, FP, FN, TN) of truth > 128 against prediction > 128, each divided by
the image's pixel count, so that every image weighs the same whatever its size; per attribute the normalised counts
are summed over all images, and Jaccard = TP / (TP + FP + FN), Dice = 2 TP / (2 TP + FP + FN) of the sums. So an
image without the attribute adds only its false positives (nothing when the prediction is empty too), and an
image is never scored alone (a per-image mean would give every empty-and-empty image a perfect 1). The challenge's
overall score is the micro average: the normalised counts summed over every image and attribute. wsm also reports
the mean of the per-attribute Jaccards. An attribute that neither the truths nor the predictions ever show scores
1, as the challenge's metrics score an empty truth predicted empty.
"""
from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from archive_client.challenges import ATTRIBUTES, attribute_file_name
from wsm.io.atomic import json_safe, write_json, write_text_atomic
from wsm.io.lock import locks_output
from wsm.selection import DataError

__all__ = ["AttributeReportSummary", "build_attribute_report", "normalised_counts", "read_attribute_truths",
           "task2_scores"]

COUNTS = ("tp", "fp", "fn", "tn")
GALLERY_SIZE = 6          # images per attribute section: those with the most truth (or predicted) pixels


def normalised_counts(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """TP, FP, FN, TN of two bool masks of one shape, each divided by the pixel count (the challenge's rule)."""
    from wsm.metrics import confusion_counts

    counts = confusion_counts(truth, pred)
    total = float(truth.size) or 1.0
    return {name: getattr(counts, name) / total for name in COUNTS}


def _jaccard_dice(tp: float, fp: float, fn: float) -> tuple[float, float]:
    if tp + fp + fn == 0:      # nothing to find and nothing found: a perfect answer, as the challenge scores it
        return 1.0, 1.0
    return tp / (tp + fp + fn), 2 * tp / (2 * tp + fp + fn)


def task2_scores(per_image: pd.DataFrame, attributes: Sequence[str] = ATTRIBUTES) -> dict:
    """The challenge's scores from normalised counts, one row per (isic_id, attribute) with columns tp, fp, fn.

    Returns {attribute: {jaccard, dice, images, images_with_truth, images_with_prediction}, "micro_average":
    {jaccard, dice}, "mean_jaccard": float, "mean_dice": float, "n_images": int}.
    """
    scores: dict = {}
    for attribute in attributes:
        rows = per_image[per_image["attribute"] == attribute]
        jaccard, dice = _jaccard_dice(*(float(rows[c].sum()) for c in ("tp", "fp", "fn")))
        scores[attribute] = {"jaccard": jaccard, "dice": dice, "images": int(len(rows)),
                             "images_with_truth": int((rows["truth_pixels"] > 0).sum()),
                             "images_with_prediction": int((rows["pred_pixels"] > 0).sum())}
    jaccard, dice = _jaccard_dice(*(float(per_image[c].sum()) for c in ("tp", "fp", "fn")))
    scores["micro_average"] = {"jaccard": jaccard, "dice": dice}
    scores["mean_jaccard"] = float(np.mean([scores[a]["jaccard"] for a in attributes]))
    scores["mean_dice"] = float(np.mean([scores[a]["dice"] for a in attributes]))
    scores["n_images"] = int(per_image["isic_id"].nunique()) if len(per_image) else 0
    return scores


# ------------------------------------------------------------------------------------------------------ DATA

def read_attribute_truths(data: Path | str, split: str = "all", only_ids: Collection[str] | None = None
                          ) -> pd.DataFrame:
    """One row per image with every attribute mask: isic_id, split, file (the image) and one
    ``mask_<attribute>`` column per attribute (paths relative to DATA), sorted by isic_id."""
    from archive_client.layout import DataLayout
    from wsm.selection import read_attribute_manifest, read_manifest, split_names

    layout = DataLayout(Path(data))
    if not layout.attribute_manifest.exists():
        raise DataError(f"{layout.root} has no attribute masks ({layout.attribute_manifest.name}); get them with "
                        f"`wsm download --challenge isic2018 --task attributes --out {layout.root}` or "
                        f"`wsm import --images DIR --attributes DIR --out {layout.root}`")
    masks = read_attribute_manifest(layout.root)
    if split not in ("all", "labeled"):
        masks = masks[masks["split"].isin(split_names(split))]
    # one challenge's set per image, the newest (as for lesion masks): attributes never mix sources
    newest = masks.groupby("isic_id")["challenge"].transform("max")
    masks = masks[masks["challenge"] == newest]
    wide = masks.pivot_table(index=["isic_id", "split"], columns="attribute", values="mask_file", aggfunc="first")
    wide = wide.reindex(columns=list(ATTRIBUTES)).dropna().add_prefix("mask_").reset_index()
    images = read_manifest(data)[["isic_id", "file"]]
    rows = wide.merge(images, on="isic_id", how="inner")
    if only_ids is not None:
        rows = rows[rows["isic_id"].isin(set(only_ids))]
    rows = rows.drop_duplicates("isic_id").sort_values("isic_id").reset_index(drop=True)
    if rows.empty:
        raise DataError(f"no image of split {split!r} in {layout.root} has its five attribute masks and its image"
                        + (" among the --only ids" if only_ids is not None else "")
                        + f"; bring the images in with `wsm download --challenge isic2018 --task attributes --inputs "
                        f"--out {layout.root}` (or `wsm import --images DIR`), or choose another split")
    return rows


# ------------------------------------------------------------------------------------------------------ report

@dataclass
class AttributeReportSummary:
    out: Path
    scores: dict = field(default_factory=dict)
    missing: list = field(default_factory=list)     # (isic_id, attribute) with a truth but no map

    @property
    def ok(self) -> bool:
        return not self.missing

    @property
    def html(self) -> Path:
        return self.out / "report.html"

    def lines(self) -> list[str]:
        s = self.scores
        out = [f"{s.get('n_images', 0)} images scored as ISIC 2018 Task 2 was: mean Jaccard over the attributes "
               f"{s.get('mean_jaccard', math.nan):.4f}, micro average (the challenge's score) "
               f"{s.get('micro_average', {}).get('jaccard', math.nan):.4f}"]
        out += [f"  {a}: Jaccard {s[a]['jaccard']:.4f}, Dice {s[a]['dice']:.4f} ({_images(s[a]['images_with_truth'])} "
                f"with it, {s[a]['images_with_prediction']} predicted)" for a in ATTRIBUTES if a in s]
        if self.missing:
            out.append(f"{len(self.missing)} attribute masks have no map (e.g. {self.missing[0][0]} "
                       f"{self.missing[0][1]}); they are listed in the report, not scored (a `wsm train --task "
                       "attributes` run maps its eval split only: give that --split, or --only its eval_ids.txt)")
        out.append(f"outputs: {self.html}, {self.out / 'metrics.json'}, {self.out / 'per_image.csv'}")
        return out


def _images(n: int) -> str:
    return f"{n} image" + ("" if n == 1 else "s")


def _score_image(data: Path, maps: Path, row) -> tuple[list[dict], list[tuple[str, str]]]:
    from wsm.io.images import read_mask
    from wsm.metrics import binarise

    scored, missing = [], []
    for attribute in ATTRIBUTES:
        truth = binarise(read_mask(data / row[f"mask_{attribute}"]))
        path = maps / attribute_file_name(row["isic_id"], attribute)
        if not path.is_file():
            missing.append((row["isic_id"], attribute))
            continue
        pred = binarise(read_mask(path))
        if pred.shape != truth.shape:
            raise DataError(f"{path} is {pred.shape[1]}x{pred.shape[0]} but its truth is "
                            f"{truth.shape[1]}x{truth.shape[0]}: attribute maps must have their image's size")
        scored.append({"isic_id": row["isic_id"], "attribute": attribute, **normalised_counts(truth, pred),
                       "truth_pixels": int(truth.sum()), "pred_pixels": int(pred.sum())})
    return scored, missing


def _gallery(data: Path, maps: Path, rows: pd.DataFrame, per_image: pd.DataFrame, attribute: str) -> str:
    from wsm.io.images import read_image, read_mask
    from wsm.report.html import escape, number, thumbnail_uri

    mine = per_image[per_image["attribute"] == attribute]
    mine = mine.assign(shown=mine["truth_pixels"] + mine["pred_pixels"]).sort_values("shown", ascending=False)
    files = rows.set_index("isic_id")
    figures = []
    for record in mine.head(GALLERY_SIZE).itertuples():
        isic_id = record.isic_id
        image = read_image(data / files.loc[isic_id, "file"])
        truth = read_mask(data / files.loc[isic_id, f"mask_{attribute}"])
        pred = (read_mask(maps / attribute_file_name(isic_id, attribute)) > 128).astype(np.uint8)
        jaccard, _ = _jaccard_dice(record.tp, record.fp, record.fn)
        figures.append(f'<figure><img alt="{escape(isic_id)}" src="{thumbnail_uri(image, truth, pred)}">'
                       f"<figcaption><b>{escape(isic_id)}</b> Jaccard on this image {number(jaccard, 3)}; "
                       f"truth {record.truth_pixels} px, map {record.pred_pixels} px</figcaption></figure>")
    return f'<div class="grid">{"".join(figures)}</div>' if figures else "<p>No image shows it.</p>"


def _render(report: Mapping, sections: Mapping[str, str]) -> str:
    from wsm.report.html import GREEN, RED, escape, number, page, table

    s = report["scores"]
    rows = [[escape(a), number(s[a]["jaccard"]), number(s[a]["dice"]), number(s[a]["images_with_truth"]),
             number(s[a]["images_with_prediction"])] for a in ATTRIBUTES]
    rows += [["<b>mean of the attributes</b>", number(s["mean_jaccard"]), number(s["mean_dice"]), "", ""],
             ["<b>micro average</b> (the challenge's score)", number(s["micro_average"]["jaccard"]),
              number(s["micro_average"]["dice"]), "", ""]]
    legend = (f'<p class="legend">Left: the image; right: the contours of<span style="background:rgb{GREEN}">'
              f'</span>the attribute mask and<span style="background:rgb{RED}"></span>the map. The images where '
              "the attribute or the map covers the most pixels.</p>")
    body = ["<h1>wsm report: dermoscopic attributes</h1>",
            f"<p>Split <b>{escape(report['split'])}</b>: {s['n_images']} images, maps "
            f"<code>{escape(report['maps'])}</code> against the attribute masks of <code>{escape(report['data'])}"
            f"</code>; made {escape(report['created'])} by wsm {escape(report['wsm_version'])}.</p>",
            f'<p class="note">{escape(report["rule"])}</p>',
            "<h2>Scores</h2>",
            table(["attribute", "Jaccard", "Dice", "images with it", "images predicted"], rows, table_id="scores")]
    for attribute in ATTRIBUTES:
        body += [f'<h2 id="{escape(attribute)}">{escape(attribute.replace("_", " "))}</h2>', legend,
                 sections[attribute]]
    if report["missing"]:
        listed = [[escape(i), escape(a)] for i, a in report["missing"][:200]]
        body += [f"<h2>Attribute masks without a map ({len(report['missing'])})</h2>",
                 table(["isic_id", "attribute"], listed, left=2)]
    body += ["<h2>Provenance</h2>", f"<p><code>{escape(report['command'])}</code></p>"]
    return page("wsm report: attributes", body)


RULE = ("Scored as ISIC 2018 Task 2 was ranked (isic-challenge-scoring task2): per image and attribute, the "
        "confusion counts divided by the image's pixel count; per attribute, Jaccard and Dice of their sums over "
        "all images; the challenge's overall score is the micro average over every image and attribute.")


@locks_output("out")
def build_attribute_report(maps: Path | str, data: Path | str, out: Path | str, split: str = "all",
                           only_ids: Collection[str] | None = None, command: str = "",
                           progress: bool = True) -> AttributeReportSummary:
    """Score a folder of attribute maps against DATA's attribute masks; write OUT/report.html (a section per
    attribute with a gallery), metrics.json and per_image.csv (one row per image and attribute)."""
    from wsm import __version__
    from wsm.io.progress import progress as progress_bar

    maps, data, out = Path(maps), Path(data), Path(out)
    if not maps.is_dir():
        raise DataError(f"attribute map folder {maps} does not exist; give the folder of "
                        "ISIC_x_attribute_<name>.png maps (e.g. RUN/predictions of `wsm train --task attributes`)")
    rows = read_attribute_truths(data, split, only_ids)
    scored, missing = [], []
    for _, row in progress_bar(rows.iterrows(), total=len(rows), desc="score", unit="img", enabled=progress):
        image_rows, image_missing = _score_image(data, maps, row)
        scored += image_rows
        missing += image_missing
    per_image = pd.DataFrame(scored, columns=["isic_id", "attribute", *COUNTS, "truth_pixels", "pred_pixels"])
    if per_image.empty:
        raise DataError(f"{maps} holds no map of the {len(rows)} images with attribute masks (expected names like "
                        f"{attribute_file_name(rows['isic_id'].iloc[0], ATTRIBUTES[0])})")
    scores = task2_scores(per_image)
    report = {"split": split, "maps": str(maps), "data": str(data), "command": command, "rule": RULE,
              "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "wsm_version": __version__,
              "scores": scores, "missing": missing}
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "per_image.csv", per_image.to_csv(index=False))
    write_json(out / "metrics.json", json_safe(report))
    sections = {a: _gallery(data, maps, rows, per_image, a) for a in ATTRIBUTES}
    write_text_atomic(out / "report.html", _render(report, sections))
    return AttributeReportSummary(out, scores, missing)
