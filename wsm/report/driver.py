"""`wsm report`: score ISIC_WSM label maps against the official masks, honestly, and write REPORT/.

    REPORT/
      metrics.json     aggregates (both treatments of 255), breakdowns, calibration, counts, command, manifest hashes
      per_image.csv    one row per image of the split that has an official mask: metrics, or why there are none
      report.html      one self-contained page: tables, charts and galleries of the best and worst maps

Rules (the ISIC 2018 Task 1 metrics, and an honest evaluation):

- Every number is the official one (``wsm.metrics``, equal to isic-challenge-scoring 5.6.0), with the uncertain
  (255) pixels scored both as background (what the official scorer sees in the 0/255 export) and left out, then
  weighted by coverage (``wsm.metrics.LEFT_OUT_DEFINITION``: a wholly uncertain map scores 0, never 1).
- Masks and maps are read by their conventions (``wsm.io.images.read_official_mask``, ``read_label_map``): a file
  whose values mean something else is an ``error`` row with the values found, never a silent score.
- The headline covers only images whose map is a weak map (``source == "weak"``) and whose mask fit did not use
  (``mask_used_in_fit`` false; null counts as used): a map fitted to its own mask, or an official mask copied as
  the map (``--prefer-official``), measures nothing. The report says how many images each rule excluded
  (headline + excluded_mask_used_in_fit + excluded_official_source = scored).
- Nothing is dropped silently: an image with a mask but no map is a ``missing`` row, a mask whose size differs from
  its map (or a file that cannot be read) an ``error`` row; maps without a mask are counted.
- Maps made elsewhere are scored too (:func:`read_maps`): a folder without WSM/manifest.parquet holding either
  ISIC_WSM maps (``ISIC_x.png``, 0/1/255) or challenge-style masks (``ISIC_x_segmentation.png``, 0/255, no
  uncertain pixels). Nothing then says which official masks fitted whatever made them: every map counts as a
  weak map and goes into the headline, which the report flags as *not known to be held out*; ``fitted_ids``
  (``--fitted-ids``) takes images out of the headline as fitted (with a manifest, it adds to ``mask_used_in_fit``).

The core is pure (:mod:`wsm.report.scoring`), :mod:`wsm.folders.maps` finds and reads the maps, the driver
:func:`build_report` does the files, and :mod:`wsm.report.html` draws the page.
"""

from __future__ import annotations

import logging
import math
import shlex
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from archive_client.layout import DataLayout
from wsm import __version__
from wsm.folders.wsm_folder import WsmFolder
from wsm.io.atomic import json_safe, write_json, write_text_atomic
from wsm.io.hashing import sha256_file
from wsm.io.images import ImageDecodeError, read_official_mask
from wsm.io.lock import locks_output
from wsm.folders.maps import (CONVENTIONS, ISIC_WSM, MAP_COLUMNS, MapsFolder, ReportError, images_phrase,
                              made_with, read_map, read_maps)
from wsm.metrics import LEFT_OUT_DEFINITION
from wsm.report.scoring import UNKNOWN, gallery_ids, image_group, metric_columns, score_image, size_bins, summarise
from wsm.selection import read_manifest, read_truth, select_split, warn_unknown_ids, with_truth

__all__ = ["ReportSummary", "build_report", "collect_rows", "report_command"]

log = logging.getLogger(__name__)

GALLERY_PIXELS = 256                                       # longest side of a gallery picture



def _interval(means: dict) -> str:
    """``95% CI 0.52-0.75, n 8``: how far a mean over few images can be trusted."""
    ci = means.get("jaccard_ci95")
    span = f"95% CI {ci[0]:.2f}-{ci[1]:.2f}, " if ci else ""
    return f"{span}n {means['n_images']}"


@dataclass
class ReportSummary:
    out: Path
    counts: dict = field(default_factory=dict)
    headline: dict | None = None
    errors: list = field(default_factory=list)     # {"isic_id", "error"} of maps that could not be scored
    maps: Path | None = None                       # the folder scored
    data: Path | None = None
    convention: str = ISIC_WSM
    fitting_known: bool = True                     # False: no WSM manifest, the headline is not known to be held out
    fitted_ids: int = 0                            # how many isic_ids --fitted-ids gave
    notes: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def html(self) -> Path:
        return self.out / "report.html"

    def lines(self) -> list[str]:
        c = self.counts
        datasets = ", ".join(f"{name} {n}" for name, n in c.get("datasets", {}).items())
        out = [f"{c['scored']} images scored against their official masks ({datasets}); headline on {c['headline']} "
               f"(excluded: {c['excluded_mask_used_in_fit']} whose mask fit used or may have used, "
               f"{c['excluded_official_source']} official masks copied as maps)"]
        if not self.fitting_known:
            fitted = (f"except the {images_phrase(self.fitted_ids)} --fitted-ids names" if self.fitted_ids else
                      "; give --fitted-ids FILE (isic_ids, one per line, or a CSV with an isic_id column) to leave "
                      "out the images whose official masks were used to make them")
            out.append(f"not known to be held out: {self.maps} has no WSM manifest ({CONVENTIONS[self.convention]}), "
                       "so this report cannot know which official masks were used to fit whatever made the maps; "
                       f"the headline counts every map as a held-out weak map {fitted}")
        if self.headline:
            bg, ign = self.headline["uncertain_as_background"], self.headline["uncertain_ignored"]
            flag = "" if self.fitting_known else " -- NOT KNOWN to be held out"
            out.append(f"headline Jaccard {bg['jaccard']:.4f} ({_interval(bg)}; 255 as background), {ign['jaccard']:.4f} "
                       f"(255 left out, weighted by coverage {ign['coverage']:.1%}), threshold Jaccard "
                       f"{bg['threshold_jaccard']:.4f}, Dice {bg['dice']:.4f}{flag}")
        elif self.fitting_known:
            out.append("no headline: every scored map is an official mask or was fitted to its own mask")
        else:
            out.append("no headline: --fitted-ids names every scored image")
        out.append(f"{c['missing_map']} images with a mask but no map, {c['errors']} errors, "
                   f"{c['map_without_mask']} maps without an official mask")
        out += [f"error {e['isic_id']}: {e['error']}" for e in self.errors[:5]]
        if len(self.errors) > 5:
            out.append(f"... {len(self.errors) - 5} more errors in {self.out / 'per_image.csv'}")
        out += [f"note: {note}" for note in self.notes]
        out.append(f"report: {self.html} (metrics.json and per_image.csv beside it)")
        out.append(self._next())
        return out

    def _next(self) -> str:
        text = f"next: open {self.html} in a browser"
        if self.convention == ISIC_WSM and self.maps is not None and self.data is not None:
            text += f"; {train_hint(self.data, self.maps)}"
        return text


def train_hint(data: Path, maps: Path) -> str:
    """The `wsm train` command that trains on the maps and can be evaluated: on DATA's val or test masks (which
    `wsm fit` leaves alone), or, where DATA has none, without evaluation and saying why."""
    splits = set(read_truth(data)["split"].dropna())
    held_out = next((split for split in ("val", "test") if split in splits), None)
    train = ["wsm", "train", "--data", str(data), "--labels", "both", "--maps", str(maps), "--out", "RUN",
             "--eval-split", held_out or "none"]
    if held_out:
        return f"to train a segmentation network on these maps, scored on the {held_out} masks: {shlex.join(train)}"
    return ("to train a segmentation network on these maps (DATA has no val or test masks to score it on: import "
            f"some with `wsm import --assign-split test`): {shlex.join(train)}")



def _sha256(path: Path) -> str | None:
    return sha256_file(path) if path.exists() else None



def report_command(maps: Path, data: Path, out: Path, split: str, only: str | None = None,
                   fitted: str | None = None) -> str:
    """The `wsm report` command line that reproduces a report."""
    args = ["wsm", "report", "--maps", str(maps), "--data", str(data), "--split", split]
    if only:
        args += ["--only", only]
    if fitted:
        args += ["--fitted-ids", fitted]
    return shlex.join(args + ["--out", str(out)])



_ROW_COLUMNS = ["isic_id", "status", *metric_columns("bg"), *metric_columns("ignore"), "uncertain_fraction",
                "coverage", "truth_lesion_fraction", "confidence", "predicted_jaccard", "source", "mask_used_in_fit",
                "headline",
                "diagnosis", "image_type", "size_bin", "error"]

_PATH_COLUMNS = ["_image", "_mask", "_map"]   # where the files are, for the galleries (not written to the CSV)



def _score_row(data: Path, pred: Path, row, convention: str = ISIC_WSM) -> dict:
    """One image with a mask and a map: its metrics, or an error row that says what was wrong."""
    try:
        truth = read_official_mask(data / row.mask_file)
        label_map = read_map(pred / row.path, convention)
        if truth.shape != label_map.shape:
            raise ValueError(f"official mask is {truth.shape[1]}x{truth.shape[0]} but the map is "
                             f"{label_map.shape[1]}x{label_map.shape[0]} (width x height); regenerate the map "
                             "from the image the mask belongs to")
        return {"status": "scored", **score_image(truth, label_map)}
    except (ValueError, OSError, ImageDecodeError) as err:
        return {"status": "error", "error": f"{err.__class__.__name__}: {err}"[:500]}



def _no_masks_error(everything: pd.DataFrame, data: Path, split: str,
                    only_ids: Collection[str] | None) -> ReportError:
    """Why there is nothing to score: where the official masks are (if anywhere), and how to get them."""
    layout = DataLayout(data)
    fetch = (f"import the masks with `wsm import --images {layout.images} --masks MASKS --out {data}` (MASKS: a "
             f"folder of ISIC_x_segmentation.png) or download them with `wsm download --challenge isic2018 "
             f"--out {data}`")
    if not layout.gt_manifest.exists():
        return ReportError(f"no official mask to score in --split {split}: {data} has no official masks (no "
                           f"{layout.gt_manifest.name}); {fetch}")
    masked = everything[everything["mask_file"].notna()]
    by_split = masked["split"].fillna("none").value_counts().sort_index().to_dict()
    where = f"--split {split}{' with --only' if only_ids else ''}"
    if not by_split:
        return ReportError(f"no official mask to score in {where} of {data}: it has no official masks; {fetch}")
    listed = ", ".join(f"{name} ({n} images)" for name, n in by_split.items())
    other = [name for name in by_split if name not in (split, "none")]
    if only_ids:
        hint = ("none of the --only ids has an official mask there; check the ids file"
                + (f", or score --split {other[0]}" if other else ""))
    elif other:
        hint = f"score those with --split {other[0]} (or --split all), or {fetch}"
    else:
        hint = fetch
    return ReportError(f"no official mask to score in {where} of {data}; its official masks are in the splits "
                       f"{listed}: {hint}")



def collect_rows(pred: Path, data: Path, split: str = "all", only_ids: Collection[str] | None = None, *,
                 fitted_ids: Collection[str] | None = None,
                 maps: MapsFolder | None = None) -> tuple[pd.DataFrame, dict]:
    """The per-image table of a report (scored, error and missing rows) and the counts.

    ``fitted_ids``: images whose official mask fitted whatever made the maps (kept out of the headline); ``maps``:
    the folder already read with :func:`read_maps` (read here when None).
    """
    maps = maps if maps is not None else read_maps(pred, data)
    everything = with_truth(read_manifest(data), read_truth(data))
    images = select_split(everything, split)
    if only_ids:
        images = images[images["isic_id"].isin(set(only_ids))].reset_index(drop=True)
    if images["mask_file"].isna().all():
        raise _no_masks_error(everything, data, split, only_ids)
    fitted = frozenset(fitted_ids or ())
    if fitted:
        warn_unknown_ids("--fitted-ids", fitted, everything["isic_id"], data)
    convention = maps.convention
    merged = images.merge(maps.rows[MAP_COLUMNS].rename(columns={"status": "map_status", "error": "map_error"}),
                          on="isic_id", how="left")
    has_mask = merged["mask_file"].notna()
    map_ok = (merged["map_status"] == "ok") & merged["path"].notna()
    map_ok &= np.array([isinstance(p, str) and (pred / p).is_file() for p in merged["path"]], dtype=bool)
    counts = {
        "split_images": int(len(merged)),
        "with_mask": int(has_mask.sum()),
        "map_without_mask": int((map_ok & ~has_mask).sum()),
        "maps_outside_split": int((~maps.rows["isic_id"].isin(set(images["isic_id"]))).sum()),
        "datasets": {str(k): int(v) for k, v in sorted(merged.loc[has_mask, "challenge"].value_counts().items())},
    }
    expected_name = "{}.png" if convention == ISIC_WSM else "{}_segmentation.png"
    rows = []
    for row in merged[has_mask].itertuples(index=False):
        used = bool(row.mask_used_in_fit) if pd.notna(row.mask_used_in_fit) else None
        base = {
            "isic_id": row.isic_id,
            "confidence": float(row.confidence) if pd.notna(row.confidence) else math.nan,
            "predicted_jaccard": float(row.predicted_jaccard) if pd.notna(row.predicted_jaccard) else math.nan,
            "source": row.source if isinstance(row.source, str) else None,
            "mask_used_in_fit": True if row.isic_id in fitted else used,
            "diagnosis": image_group(getattr(row, "diagnosis_3", None), getattr(row, "diagnosis_1", None)),
            "image_type": row.image_type if isinstance(getattr(row, "image_type", None), str) else UNKNOWN,
            "_image": str(data / row.file), "_mask": str(data / row.mask_file),
            "_map": str(pred / row.path) if isinstance(row.path, str) else None,
        }
        if not isinstance(row.map_status, str):
            reason = ("the WSM manifest has no row for it" if maps.fitting_known
                      else f"{pred} has no {expected_name.format(row.isic_id)}")
            rows.append({**base, "status": "missing", "error": f"no map: {reason}"})
        elif row.map_status != "ok" or not isinstance(row.path, str):
            why = "skipped" if row.map_status == "skipped" else "generate failed"
            rows.append({**base, "status": "missing", "error": f"no map: {why} ({row.map_error or row.map_status})"})
        elif not (pred / row.path).is_file():
            rows.append({**base, "status": "missing", "error": f"no map: {pred / row.path} is absent"})
        else:
            rows.append({**base, **_score_row(data, pred, row, convention)})
    table = pd.DataFrame(rows, columns=[*_ROW_COLUMNS, *_PATH_COLUMNS])
    scored = table["status"] == "scored"
    # a null mask_used_in_fit (an older manifest) counts as used: a number the manifest cannot vouch for is out;
    # without a manifest nothing vouches for any map, and the headline says it is not known to be held out
    fit_clean = np.array([not v if isinstance(v, (bool, np.bool_)) else not maps.fitting_known
                          for v in table["mask_used_in_fit"]], dtype=bool)
    table["headline"] = scored & fit_clean & (table["source"] == "weak")
    names, edges = size_bins(table.loc[scored, "truth_lesion_fraction"].tolist())
    table["size_bin"] = table["size_bin"].astype(object)
    table.loc[scored, "size_bin"] = names
    table["lesion_size"] = table["size_bin"]
    counts.update({
        "scored": int(scored.sum()),
        "headline": int(table["headline"].sum()),
        "excluded_mask_used_in_fit": int((scored & ~fit_clean).sum()),
        "excluded_official_source": int((scored & fit_clean & (table["source"] != "weak")).sum()),
        "missing_map": int((table["status"] == "missing").sum()),
        "errors": int((table["status"] == "error").sum()),
        "lesion_size_edges": edges,
    })
    return table, counts



def _thumbnail(table: pd.DataFrame, isic_id: str, draw, convention: str = ISIC_WSM) -> str | None:
    """The gallery picture of one scored image (a data: URI), or None when its image cannot be read."""
    from wsm.io.images import read_image

    row = table.loc[table["isic_id"] == isic_id].iloc[0]
    try:
        image = read_image(row["_image"], min_side=GALLERY_PIXELS)
        return draw(image, read_official_mask(row["_mask"]), read_map(row["_map"], convention), GALLERY_PIXELS)
    except (ValueError, OSError, ImageDecodeError) as err:
        log.warning("%s: no gallery picture (%s)", isic_id, err)
        return None



def _unique(maps: pd.DataFrame, column: str) -> list[str]:
    if column not in maps.columns:
        return []
    return sorted({str(v) for v in maps[column].dropna()})



def _headline_rule(maps: MapsFolder) -> str:
    if maps.fitting_known:
        return ("source == weak and mask_used_in_fit == false (a map fitted to, or copied from, its own mask "
                "measures nothing; a null mask_used_in_fit counts as used)")
    return ("every map not in --fitted-ids: the maps have no WSM manifest, so which official masks were used to fit "
            "whatever made them is not known, and the headline is NOT KNOWN to be held out")



@locks_output("out")
def build_report(pred: Path | str, data: Path | str, out: Path | str, split: str = "all",
                 only_ids: Collection[str] | None = None, *, command: str | None = None,
                 fitted_ids: Collection[str] | None = None) -> ReportSummary:
    """Score the maps in ``pred`` against the official masks in ``data`` and write ``out``.

    Args:
        pred: the maps (``--maps``): WSM/ from `wsm generate` (manifest.parquet and the label maps), or a folder of
            maps made elsewhere, ISIC_x.png (0/1/255) or ISIC_x_segmentation.png (0/255); see :func:`read_maps`.
        data: DATA/ with manifest.parquet and gt_manifest.parquet (the official masks).
        out: REPORT/ to write metrics.json, per_image.csv and report.html into (created; files replaced atomically).
        split: all, labeled, train, val or test (see wsm.selection.select_split).
        only_ids: restrict to these isic_ids (e.g. a held-out fold); None or empty: no restriction.
        command: the command line to record; default: the equivalent `wsm report` line.
        fitted_ids: isic_ids whose official masks were used to fit whatever made the maps: scored, but kept out of
            the headline (added to the WSM manifest's mask_used_in_fit; without a manifest, the only ones known).
    """
    from wsm.report.html import render_report, thumbnail_uri

    pred, data, out = Path(pred), Path(data), Path(out)
    maps = read_maps(pred, data)
    fitted = frozenset(fitted_ids or ())
    table, counts = collect_rows(pred, data, split, only_ids, fitted_ids=fitted, maps=maps)
    summary = summarise(table)
    best, worst, gallery_pool = gallery_ids(table)
    layout = DataLayout(data)
    only = "IDS" if only_ids else None        # the ids themselves are in metrics.json (only_ids, fitted_ids)
    if maps.fitting_known:
        fitting = ("the WSM manifest's mask_used_in_fit says which maps were fitted to their own official mask"
                   + (f", and --fitted-ids adds {len(fitted)} ids" if fitted else ""))
    else:
        fitting = (f"{pred} has no WSM manifest ({CONVENTIONS[maps.convention]}): this report cannot know which "
                   "official masks were used to fit whatever made these maps. Every map is treated as a weak map "
                   "and counted in the headline, "
                   + (f"except the {images_phrase(len(fitted))} of --fitted-ids, left out as fitted" if fitted else
                      "as none is known to be fitted (give --fitted-ids FILE, isic_ids one per line, to leave out "
                      "those that were)")
                   + ": the headline is NOT KNOWN to be held out")
    made = made_with(pred) if maps.fitting_known else {}
    report = {
        "wsm_version": __version__,
        "created": datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": command or report_command(pred, data, out, split, only, "IDS" if fitted else None),
        "split": split,
        "only_ids": sorted(only_ids) if only_ids else None,
        "fitted_ids": sorted(fitted) if fitted else None,
        "pred": str(pred),
        "data": str(data),
        "maps": {
            "folder": str(pred),
            "convention": maps.convention,
            "convention_description": CONVENTIONS[maps.convention],
            "wsm_manifest": str(maps.manifest) if maps.manifest else None,
            "fitting_known": maps.fitting_known,
            "pipeline_name": made.get("pipeline"),
            "bundle": made.get("bundle"),
            "fitting": fitting,
            "notes": list(maps.notes),
        },
        "headline_held_out": "known" if maps.fitting_known else "not known",
        "wsm_manifest_sha256": _sha256(WsmFolder(pred).manifest),
        "data_manifest_sha256": _sha256(layout.manifest),
        "gt_manifest_sha256": _sha256(layout.gt_manifest),
        "maps_provenance": {c: _unique(maps.rows, c) for c in ("pipeline_sha256", "model_sha256", "wsm_version")},
        "counts": {k: v for k, v in counts.items() if k != "lesion_size_edges"},
        "uncertain_ignored_definition": LEFT_OUT_DEFINITION,
        "headline_rule": _headline_rule(maps),
        **summary,
        "lesion_size_edges": counts["lesion_size_edges"],
        "missing": table.loc[table["status"] == "missing", ["isic_id", "error"]]
                        .rename(columns={"error": "reason"}).to_dict("records"),
        "errors": table.loc[table["status"] == "error", ["isic_id", "error"]].to_dict("records"),
        "galleries": {"from": gallery_pool, "best": best, "worst": worst},
    }
    report = json_safe(report)
    out.mkdir(parents=True, exist_ok=True)
    csv = table[_ROW_COLUMNS]
    write_text_atomic(out / "per_image.csv", csv.to_csv(index=False, float_format="%.17g"))
    write_json(out / "metrics.json", report, sort_keys=False, allow_nan=False, default=None)
    thumbnails = {isic_id: _thumbnail(table, isic_id, thumbnail_uri, maps.convention)
                  for isic_id in dict.fromkeys(best + worst)}
    write_text_atomic(out / "report.html", render_report(report, csv, thumbnails))
    log.info("report written to %s", out)
    return ReportSummary(out=out, counts=report["counts"], headline=report["headline"], errors=report["errors"],
                         maps=pred, data=data, convention=maps.convention, fitting_known=maps.fitting_known,
                         fitted_ids=len(fitted), notes=list(maps.notes))
