"""`wsm report`: score ISIC_WSM label maps against the official masks, honestly, and write REPORT/.

    REPORT/
      metrics.json     aggregates (both treatments of 255), breakdowns, calibration, counts, command, manifest hashes
      per_image.csv    one row per image of the split that has an official mask: metrics, or why there are none
      report.html      one self-contained page: tables, charts and galleries of the best and worst maps

Rules (the ISIC 2018 Task 1 metrics, and an honest evaluation):

- Every number is the official one (``wsm.report.metrics``, equal to isic-challenge-scoring 5.6.0), with the uncertain
  (255) pixels scored both as background (what the official scorer sees in the 0/255 export) and left out, then
  weighted by coverage (``wsm.report.metrics.LEFT_OUT_DEFINITION``: a wholly uncertain map scores 0, never 1).
- Masks and maps are read by their conventions (``wsm.io.images.read_official_mask``, ``read_label_map``): a file
  whose values mean something else is an ``error`` row with the values found, never a silent score.
- The headline covers only images whose map is a weak map (``source == "weak"``) and whose mask fit did not use
  (``mask_used_in_fit`` false; null counts as used): a map fitted to its own mask, or an official mask copied as
  the map (``--prefer-official``), measures nothing. The report says how many images each rule excluded
  (headline + excluded_mask_used_in_fit + excluded_official_source = scored).
- Nothing is dropped silently: an image with a mask but no map is a ``missing`` row, a mask whose size differs from
  its map (or a file that cannot be read) an ``error`` row; maps without a mask are counted.

The core is pure (:func:`score_image`, :func:`size_bins`, :func:`breakdown`, :func:`calibration`,
:func:`summarise`), the driver :func:`build_report` does the files, and ``wsm.report.html`` draws the page.
"""
from __future__ import annotations

import logging
import math
import shlex
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from archive_client.layout import DataLayout
from wsm import __version__
from wsm.errors import WsmError
from wsm.generate.folder import WsmFolder
from wsm.io.atomic import write_json, write_text_atomic
from wsm.io.hashing import sha256_file
from wsm.io.images import ImageDecodeError, read_label_map, read_official_mask
from wsm.report.metrics import LEFT_OUT_DEFINITION, METRIC_NAMES, score_label_map
from wsm.selection import DataError, read_manifest, read_truth, select_split, with_truth

__all__ = [
    "BREAKDOWNS",
    "SIZE_BINS",
    "TREATMENTS",
    "ReportError",
    "ReportSummary",
    "breakdown",
    "build_report",
    "calibration",
    "gallery_ids",
    "image_group",
    "metric_columns",
    "score_image",
    "size_bins",
    "spearman",
    "summarise",
]

log = logging.getLogger(__name__)

# How the uncertain (255) pixels are treated: the key in metrics.json, and the suffix of the per-image columns.
TREATMENTS = {"uncertain_as_background": "bg", "uncertain_ignored": "ignore"}
_MODE = {"bg": "background", "ignore": "ignore"}           # wsm.report.metrics.score_label_map's names
SIZE_BINS = ("small", "medium", "large")                   # terciles of the official mask's lesion fraction
BREAKDOWNS = ("diagnosis", "image_type", "lesion_size", "source")
CALIBRATION_BINS = 5                                       # confidence quintiles
GALLERY_SIZE = 8
GALLERY_PIXELS = 256                                       # longest side of a gallery picture
UNKNOWN = "unknown"


class ReportError(WsmError, ValueError):
    """A WSM or DATA folder that a report cannot be made from."""


def metric_columns(suffix: str) -> list[str]:
    """Per-image column names of one treatment: ``jaccard_bg``, ... (suffix ``bg`` or ``ignore``)."""
    return [f"{m}_{suffix}" for m in METRIC_NAMES]


# ------------------------------------------------------------------------------------------------ pure core

def score_image(truth_mask: np.ndarray, label_map: np.ndarray) -> dict[str, float]:
    """One image's official metrics in both treatments of 255, plus the uncertain and true lesion fractions.

    Args:
        truth_mask: ``uint8`` ``(H, W)`` official mask (binarised at > 128, as the official scorer does).
        label_map: ``uint8`` ``(H, W)`` ISIC_WSM map: 0 background, 1 lesion, 255 uncertain.

    Returns:
        ``accuracy_bg`` ... ``threshold_jaccard_bg`` (255 as background), ``accuracy_ignore`` ... (255 left out,
        weighted by coverage), ``uncertain_fraction``, ``coverage`` and ``truth_lesion_fraction``.

    Raises:
        ValueError: the shapes differ, or the label map has values other than 0, 1, 255.
    """
    out: dict[str, float] = {}
    for suffix, mode in _MODE.items():
        scores = score_label_map(truth_mask, label_map, uncertain=mode)
        out.update({f"{m}_{suffix}": scores[m] for m in METRIC_NAMES})
        out["uncertain_fraction"], out["coverage"] = scores["uncertain_fraction"], scores["coverage"]
    out["truth_lesion_fraction"] = float(np.count_nonzero(np.asarray(truth_mask) > 128)) / np.asarray(truth_mask).size
    return out


def size_bins(truth_lesion_fraction: Sequence[float]) -> tuple[list[str], list[float]]:
    """Terciles of the official masks' lesion fraction: a bin name per image, and the two cut points.

    ``small``: at most the 1/3 quantile; ``medium``: above it and at most the 2/3 quantile; ``large``: above that
    (numpy's linear quantiles, so equal fractions always share a bin).
    """
    values = np.asarray(truth_lesion_fraction, dtype=np.float64)
    if values.size == 0:
        return [], []
    low, high = (float(q) for q in np.quantile(values, [1 / 3, 2 / 3]))
    names = [SIZE_BINS[0] if v <= low else SIZE_BINS[1] if v <= high else SIZE_BINS[2] for v in values]
    return names, [low, high]


def image_group(diagnosis_3: object, diagnosis_1: object) -> str:
    """The diagnosis an image is grouped under: diagnosis_3, else diagnosis_1, else ``unknown``."""
    for value in (diagnosis_3, diagnosis_1):
        if isinstance(value, str) and value.strip():
            return value.strip()
    return UNKNOWN


def _mean(values: Iterable[float]) -> float:
    arr = np.asarray([float(v) for v in values], dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    return float(arr.mean()) if arr.size else math.nan


def breakdown(rows: pd.DataFrame, key: str) -> list[dict]:
    """Mean Jaccard (both treatments) and image count per value of ``rows[key]``, over all scored rows and over
    the headline rows (``rows["headline"]``); groups with the most images first, then by name.
    """
    out = []
    for value, group in rows.groupby(key, sort=False, dropna=False):
        honest = group[group["headline"]]
        out.append({
            "group": UNKNOWN if pd.isna(value) else str(value),
            "n": int(len(group)),
            "jaccard_bg": _mean(group["jaccard_bg"]),
            "jaccard_ignore": _mean(group["jaccard_ignore"]),
            "n_headline": int(len(honest)),
            "jaccard_bg_headline": _mean(honest["jaccard_bg"]),
            "jaccard_ignore_headline": _mean(honest["jaccard_ignore"]),
        })
    order = {name: i for i, name in enumerate(SIZE_BINS)} if key == "lesion_size" else None
    if order:
        return sorted(out, key=lambda r: order.get(r["group"], len(order)))
    return sorted(out, key=lambda r: (-r["n"], r["group"]))


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (average ranks for ties, as scipy.stats.spearmanr); NaN when undefined."""
    rx = pd.Series(x, dtype="float64").rank().to_numpy()
    ry = pd.Series(y, dtype="float64").rank().to_numpy()
    if rx.size < 2 or np.std(rx) == 0 or np.std(ry) == 0:
        return math.nan
    return float(np.corrcoef(rx, ry)[0, 1])


def calibration(ids: Sequence[str], confidence: Sequence[float], jaccard: Sequence[float],
                jaccard_ignore: Sequence[float] | None = None, bins: int = CALIBRATION_BINS) -> dict:
    """Does the confidence score predict the Jaccard? Spearman correlation and mean Jaccard per confidence bin.

    Images are ordered by confidence (ties by isic_id) and cut into ``bins`` groups of equal size (the first ones
    one larger when it does not divide), so ties in confidence never make a bin empty. Images without a
    confidence or Jaccard are left out. With fewer images than bins, one bin per image.

    Returns:
        ``{"n", "spearman", "bins": [{"bin", "n", "confidence_min", "confidence_max", "confidence_mean",
        "jaccard_bg", "jaccard_ignore"}, ...]}``, bin 1 the least confident.
    """
    frame = pd.DataFrame({"isic_id": list(ids), "confidence": np.asarray(confidence, dtype=np.float64),
                          "jaccard": np.asarray(jaccard, dtype=np.float64),
                          "jaccard_ignore": (np.asarray(jaccard_ignore, dtype=np.float64)
                                             if jaccard_ignore is not None else np.nan)})
    frame = frame.dropna(subset=["confidence", "jaccard"]).sort_values(["confidence", "isic_id"], ignore_index=True)
    out: dict = {"n": int(len(frame)), "spearman": spearman(frame["confidence"], frame["jaccard"]), "bins": []}
    count = min(bins, len(frame))
    for k, index in enumerate(np.array_split(np.arange(len(frame)), count) if count else []):
        part = frame.iloc[index]
        out["bins"].append({
            "bin": k + 1,
            "n": int(len(part)),
            "confidence_min": float(part["confidence"].min()),
            "confidence_max": float(part["confidence"].max()),
            "confidence_mean": float(part["confidence"].mean()),
            "jaccard_bg": float(part["jaccard"].mean()),
            "jaccard_ignore": _mean(part["jaccard_ignore"]),
        })
    return out


def _aggregate(rows: pd.DataFrame) -> dict | None:
    """Both treatments' means over ``rows`` (NaN skipped, as the official scorer), or None when there are none."""
    if rows.empty:
        return None
    out = {}
    for name, suffix in TREATMENTS.items():
        means = {m: _mean(rows[f"{m}_{suffix}"]) for m in METRIC_NAMES}
        means["uncertain_fraction"] = _mean(rows["uncertain_fraction"])
        means["coverage"] = _mean(rows["coverage"])
        means["n_images"] = int(len(rows))
        out[name] = means
    return out


def summarise(per_image: pd.DataFrame) -> dict:
    """Aggregates, breakdowns and calibration of the per-image table (see :func:`build_report` for its columns).

    Scored rows are those with ``status == "scored"``; the headline is the scored rows with ``headline`` true.
    """
    scored = per_image[per_image["status"] == "scored"]
    honest = scored[scored["headline"]]
    return {
        "headline": _aggregate(honest),
        "all_scored": _aggregate(scored),
        "breakdowns": {key: breakdown(scored, key) for key in BREAKDOWNS},
        "calibration": calibration(honest["isic_id"].tolist(), honest["confidence"].tolist(),
                                   honest["jaccard_bg"].tolist(), honest["jaccard_ignore"].tolist()),
    }


def gallery_ids(per_image: pd.DataFrame, size: int = GALLERY_SIZE) -> tuple[list[str], list[str], str]:
    """The ``size`` best and worst maps by Jaccard (255 as background), best first and worst first.

    Chosen from the headline rows where there are any, else from all scored rows (the third value says which:
    "headline" or "all scored"). With fewer than ``2 * size`` images the two galleries split them (the better
    half, the worse half) instead of showing the same images twice.
    """
    scored = per_image[per_image["status"] == "scored"]
    pool, label = (scored[scored["headline"]], "headline") if scored["headline"].any() else (scored, "all scored")
    best = pool.sort_values(["jaccard_bg", "isic_id"], ascending=[False, True])["isic_id"].tolist()
    worst = pool.sort_values(["jaccard_bg", "isic_id"], ascending=[True, True])["isic_id"].tolist()
    n_best, n_worst = min(size, -(-len(pool) // 2)), min(size, len(pool) // 2)
    return best[:n_best], worst[:n_worst], label


# ------------------------------------------------------------------------------------------------ the driver

@dataclass
class ReportSummary:
    out: Path
    counts: dict = field(default_factory=dict)
    headline: dict | None = None
    errors: list = field(default_factory=list)     # {"isic_id", "error"} of maps that could not be scored

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def html(self) -> Path:
        return self.out / "report.html"

    def lines(self) -> list[str]:
        c = self.counts
        out = [f"{c['scored']} images scored against their official masks; headline on {c['headline']} "
               f"(excluded: {c['excluded_mask_used_in_fit']} whose mask fit used or may have used, "
               f"{c['excluded_official_source']} official masks copied as maps)"]
        if self.headline:
            bg, ign = self.headline["uncertain_as_background"], self.headline["uncertain_ignored"]
            out.append(f"headline Jaccard {bg['jaccard']:.4f} (255 as background), {ign['jaccard']:.4f} "
                       f"(255 left out, weighted by coverage {ign['coverage']:.1%}), threshold Jaccard "
                       f"{bg['threshold_jaccard']:.4f}, Dice {bg['dice']:.4f}")
        else:
            out.append("no headline: every scored map is an official mask or was fitted to its own mask")
        out.append(f"{c['missing_map']} images with a mask but no map, {c['errors']} errors, "
                   f"{c['map_without_mask']} maps without an official mask")
        out += [f"error {e['isic_id']}: {e['error']}" for e in self.errors[:5]]
        if len(self.errors) > 5:
            out.append(f"... {len(self.errors) - 5} more errors in {self.out / 'per_image.csv'}")
        out.append(f"report: {self.html}")
        return out


def _sha256(path: Path) -> str | None:
    return sha256_file(path) if path.exists() else None


def read_wsm_manifest(pred: Path) -> pd.DataFrame:
    """WSM/manifest.parquet, one row per isic_id (the last one where a merge left several)."""
    try:
        manifest = WsmFolder(pred).merged_manifest()
    except DataError as err:
        raise ReportError(str(err)) from None
    if manifest is None:
        raise ReportError(f"{WsmFolder(pred).manifest} does not exist; write maps with `wsm generate --out {pred}` "
                          "first")
    rows = pd.read_parquet(manifest)
    needed = {"isic_id", "path", "status", "source", "confidence", "mask_used_in_fit"}
    if not needed <= set(rows.columns):
        raise ReportError(f"{manifest} lacks the columns {sorted(needed - set(rows.columns))}; "
                          "it is not a WSM manifest written by `wsm generate`")
    return rows.drop_duplicates("isic_id", keep="last").reset_index(drop=True)


def report_command(pred: Path, data: Path, out: Path, split: str, only: str | None = None) -> str:
    """The `wsm report` command line that reproduces a report."""
    args = ["wsm", "report", "--pred", str(pred), "--data", str(data), "--split", split]
    if only:
        args += ["--only", only]
    return shlex.join(args + ["--out", str(out)])


_ROW_COLUMNS = ["isic_id", "status", *metric_columns("bg"), *metric_columns("ignore"), "uncertain_fraction",
                "coverage", "truth_lesion_fraction", "confidence", "source", "mask_used_in_fit", "headline",
                "diagnosis", "image_type", "size_bin", "error"]
_PATH_COLUMNS = ["_image", "_mask", "_map"]   # where the files are, for the galleries (not written to the CSV)


def _score_row(data: Path, pred: Path, row) -> dict:
    """One image with a mask and a map: its metrics, or an error row that says what was wrong."""
    try:
        truth = read_official_mask(data / row.mask_file)
        label_map = read_label_map(pred / row.path)
        if truth.shape != label_map.shape:
            raise ValueError(f"official mask is {truth.shape[1]}x{truth.shape[0]} but the map is "
                             f"{label_map.shape[1]}x{label_map.shape[0]} (width x height); regenerate the map "
                             "from the image the mask belongs to")
        return {"status": "scored", **score_image(truth, label_map)}
    except (ValueError, OSError, ImageDecodeError) as err:
        return {"status": "error", "error": f"{err.__class__.__name__}: {err}"[:500]}


def collect_rows(pred: Path, data: Path, split: str = "all",
                 only_ids: Collection[str] | None = None) -> tuple[pd.DataFrame, dict]:
    """The per-image table of a report (scored, error and missing rows) and the counts."""
    everything = with_truth(read_manifest(data), read_truth(data))
    images = select_split(everything, split)
    if only_ids:
        images = images[images["isic_id"].isin(set(only_ids))].reset_index(drop=True)
    if images["mask_file"].isna().all():
        masked = everything[everything["mask_file"].notna()]
        by_split = masked["split"].fillna("none").value_counts().sort_index().to_dict()
        raise ReportError(f"no official mask to score in --split {split}{' with --only' if only_ids else ''} of "
                          f"{data} (masks by split: {by_split or 'none'}); choose another --split")
    maps = read_wsm_manifest(pred)
    merged = images.merge(maps[["isic_id", "path", "status", "source", "confidence", "mask_used_in_fit", "error"]]
                          .rename(columns={"status": "map_status", "error": "map_error"}),
                          on="isic_id", how="left")
    has_mask = merged["mask_file"].notna()
    map_ok = (merged["map_status"] == "ok") & merged["path"].notna()
    map_ok &= np.array([isinstance(p, str) and (pred / p).is_file() for p in merged["path"]], dtype=bool)
    counts = {
        "split_images": int(len(merged)),
        "with_mask": int(has_mask.sum()),
        "map_without_mask": int((map_ok & ~has_mask).sum()),
        "maps_outside_split": int((~maps["isic_id"].isin(set(images["isic_id"]))).sum()),
    }
    rows = []
    for row in merged[has_mask].itertuples(index=False):
        base = {
            "isic_id": row.isic_id,
            "confidence": float(row.confidence) if pd.notna(row.confidence) else math.nan,
            "source": row.source if isinstance(row.source, str) else None,
            "mask_used_in_fit": bool(row.mask_used_in_fit) if pd.notna(row.mask_used_in_fit) else None,
            "diagnosis": image_group(getattr(row, "diagnosis_3", None), getattr(row, "diagnosis_1", None)),
            "image_type": row.image_type if isinstance(getattr(row, "image_type", None), str) else UNKNOWN,
            "_image": str(data / row.file), "_mask": str(data / row.mask_file),
            "_map": str(pred / row.path) if isinstance(row.path, str) else None,
        }
        if not isinstance(row.map_status, str):
            rows.append({**base, "status": "missing", "error": "no map: the WSM manifest has no row for it"})
        elif row.map_status != "ok" or not isinstance(row.path, str):
            rows.append({**base, "status": "missing",
                         "error": f"no map: generate failed ({row.map_error or row.map_status})"})
        elif not (pred / row.path).is_file():
            rows.append({**base, "status": "missing", "error": f"no map: {pred / row.path} is absent"})
        else:
            rows.append({**base, **_score_row(data, pred, row)})
    table = pd.DataFrame(rows, columns=[*_ROW_COLUMNS, *_PATH_COLUMNS])
    scored = table["status"] == "scored"
    # a null mask_used_in_fit (an older manifest) counts as used: a number the manifest cannot vouch for is out
    fit_clean = np.array([isinstance(v, (bool, np.bool_)) and not v for v in table["mask_used_in_fit"]], dtype=bool)
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


def _thumbnail(table: pd.DataFrame, isic_id: str, draw) -> str | None:
    """The gallery picture of one scored image (a data: URI), or None when its image cannot be read."""
    from wsm.io.images import read_image

    row = table.loc[table["isic_id"] == isic_id].iloc[0]
    try:
        image = read_image(row["_image"], min_side=GALLERY_PIXELS)
        return draw(image, read_official_mask(row["_mask"]), read_label_map(row["_map"]), GALLERY_PIXELS)
    except (ValueError, OSError, ImageDecodeError) as err:
        log.warning("%s: no gallery picture (%s)", isic_id, err)
        return None


def _json_safe(value):
    """NaN and infinities become null (JSON has neither); numpy scalars become Python ones."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def _unique(maps: pd.DataFrame, column: str) -> list[str]:
    if column not in maps.columns:
        return []
    return sorted({str(v) for v in maps[column].dropna()})


def build_report(pred: Path | str, data: Path | str, out: Path | str, split: str = "all",
                 only_ids: Collection[str] | None = None, *, command: str | None = None) -> ReportSummary:
    """Score the maps in ``pred`` (a WSM folder) against the official masks in ``data`` and write ``out``.

    Args:
        pred: WSM/ from `wsm generate` (manifest.parquet and the label maps).
        data: DATA/ with manifest.parquet and gt_manifest.parquet (the official masks).
        out: REPORT/ to write metrics.json, per_image.csv and report.html into (created; files replaced atomically).
        split: all, labeled, train, val or test (see wsm.selection.select_split).
        only_ids: restrict to these isic_ids (e.g. a held-out fold); None or empty: no restriction.
        command: the command line to record; default: the equivalent `wsm report` line.
    """
    from wsm.report.html import render_report, thumbnail_uri

    pred, data, out = Path(pred), Path(data), Path(out)
    table, counts = collect_rows(pred, data, split, only_ids)
    summary = summarise(table)
    best, worst, gallery_pool = gallery_ids(table)
    maps = read_wsm_manifest(pred)
    layout = DataLayout(data)
    only = "IDS" if only_ids else None        # the ids themselves are in metrics.json (only_ids)
    report = {
        "wsm_version": __version__,
        "command": command or report_command(pred, data, out, split, only),
        "split": split,
        "only_ids": sorted(only_ids) if only_ids else None,
        "pred": str(pred),
        "data": str(data),
        "wsm_manifest_sha256": _sha256(WsmFolder(pred).manifest),
        "data_manifest_sha256": _sha256(layout.manifest),
        "gt_manifest_sha256": _sha256(layout.gt_manifest),
        "maps_provenance": {c: _unique(maps, c) for c in ("pipeline_sha256", "model_sha256", "wsm_version")},
        "counts": {k: v for k, v in counts.items() if k != "lesion_size_edges"},
        "uncertain_ignored_definition": LEFT_OUT_DEFINITION,
        "headline_rule": "source == weak and mask_used_in_fit == false (a map fitted to, or copied from, its own "
                         "mask measures nothing; a null mask_used_in_fit counts as used)",
        **summary,
        "lesion_size_edges": counts["lesion_size_edges"],
        "missing": table.loc[table["status"] == "missing", ["isic_id", "error"]]
                        .rename(columns={"error": "reason"}).to_dict("records"),
        "errors": table.loc[table["status"] == "error", ["isic_id", "error"]].to_dict("records"),
        "galleries": {"from": gallery_pool, "best": best, "worst": worst},
    }
    report = _json_safe(report)
    out.mkdir(parents=True, exist_ok=True)
    csv = table[_ROW_COLUMNS]
    write_text_atomic(out / "per_image.csv", csv.to_csv(index=False, float_format="%.17g"))
    write_json(out / "metrics.json", report, sort_keys=False, allow_nan=False, default=None)
    thumbnails = {isic_id: _thumbnail(table, isic_id, thumbnail_uri) for isic_id in dict.fromkeys(best + worst)}
    write_text_atomic(out / "report.html", render_report(report, csv, thumbnails))
    log.info("report written to %s", out)
    return ReportSummary(out=out, counts=report["counts"], headline=report["headline"], errors=report["errors"])
