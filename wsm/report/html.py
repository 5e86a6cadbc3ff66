"""The page of `wsm report`: one self-contained HTML file (CSS inline, every picture a base64 PNG data: URI).

Charts are drawn with matplotlib's Agg canvas (no pyplot, no display, no global state); gallery pictures with
OpenCV: the plain image beside an overlay of it, with the official mask's contour in green, the map's lesion
contour in red and the uncertain (255) band outlined in yellow over a light yellow tint, so the skin under it stays
visible. Nothing here reads files: ``wsm.report`` passes the numbers and the pictures in.
"""
from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from wsm.metrics import METRIC_NAMES, THRESHOLD_JACCARD

__all__ = ["bin_ranges", "escape", "figure_uri", "number", "overlay", "page", "png_uri", "render_report",
           "side_by_side", "table", "thumbnail_uri"]

GREEN = (0, 200, 0)          # the official mask's contour (RGB)
RED = (230, 0, 0)            # the weak map's lesion contour
YELLOW = (255, 230, 0)       # the uncertain band: a thin outline and a light tint
BAND_ALPHA = 0.18
GAP = 6                      # pixels between the plain image and its overlay
HEADLINE_COLOUR = "#2b6cb0"
OTHER_COLOUR = "#b8b8b8"
MAX_GROUPS = 15              # bars per breakdown chart (the largest groups; the table lists all)
QUALITY_MISSES = 10          # the maps whose predicted quality missed most, listed
MAX_LISTED = 200             # rows of the missing and error tables shown (metrics.json and per_image.csv have all)


# ---------------------------------------------------------------------------------------------- pictures

def overlay(image: np.ndarray, truth_mask: np.ndarray, label_map: np.ndarray, size: int = 256) -> np.ndarray:
    """A review picture of one map: ``size`` px on its longest side, RGB ``uint8`` ``(h, w, 3)``.

    Args:
        image: ``uint8`` ``(H, W, 3)`` RGB.
        truth_mask: ``uint8`` ``(H', W')`` official mask (lesion where > 128).
        label_map: ``uint8`` ``(H'', W'')`` ISIC_WSM map (1 lesion, 255 uncertain).
        size: longest side of the result; the three inputs are each resized to it (masks nearest-neighbour).
    """
    import cv2

    height, width = image.shape[:2]
    scale = size / max(height, width)
    dims = (max(1, round(width * scale)), max(1, round(height * scale)))
    picture = cv2.resize(np.ascontiguousarray(image), dims, interpolation=cv2.INTER_AREA).astype(np.float32)
    truth = cv2.resize((np.asarray(truth_mask) > 128).astype(np.uint8), dims, interpolation=cv2.INTER_NEAREST)
    labels = cv2.resize(np.ascontiguousarray(label_map), dims, interpolation=cv2.INTER_NEAREST)
    band = labels == 255
    picture[band] = picture[band] * (1 - BAND_ALPHA) + np.array(YELLOW, np.float32) * BAND_ALPHA
    picture = np.ascontiguousarray(picture.round().clip(0, 255).astype(np.uint8))
    contours, _ = cv2.findContours(band.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(picture, contours, -1, YELLOW, thickness=1, lineType=cv2.LINE_8)
    for mask, colour in ((truth, GREEN), ((labels == 1).astype(np.uint8), RED)):
        contours, _ = cv2.findContours(mask, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(picture, contours, -1, colour, thickness=2, lineType=cv2.LINE_AA)
    return picture


def side_by_side(image: np.ndarray, picture: np.ndarray) -> np.ndarray:
    """The plain image (resized to ``picture``'s size) left of ``picture``, on white, ``GAP`` px apart."""
    import cv2

    height, width = picture.shape[:2]
    plain = cv2.resize(np.ascontiguousarray(image), (width, height), interpolation=cv2.INTER_AREA)
    out = np.full((height, 2 * width + GAP, 3), 255, np.uint8)
    out[:, :width], out[:, width + GAP:] = plain, picture
    return out


def png_uri(rgb: np.ndarray) -> str:
    """An RGB (or grey) ``uint8`` array as a ``data:image/png;base64,...`` URI."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def thumbnail_uri(image: np.ndarray, truth_mask: np.ndarray, label_map: np.ndarray, size: int = 256) -> str:
    """The gallery picture: the plain image and its :func:`overlay` side by side, as one PNG data: URI."""
    return png_uri(side_by_side(image, overlay(image, truth_mask, label_map, size)))


def figure_uri(fig) -> str:
    """A matplotlib Figure as a PNG data: URI (no Software chunk, so no URL hides in the page)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(width: float, height: float):
    from matplotlib.figure import Figure  # drawn on an Agg canvas in figure_uri: no pyplot, no backend switch

    return Figure(figsize=(width, height), layout="constrained")


def histogram_uri(per_image: pd.DataFrame) -> str:
    """Per-image Jaccard (255 as background): headline images, with the other scored images stacked in grey."""
    scored = per_image[per_image["status"] == "scored"]
    honest = scored.loc[scored["headline"].astype(bool), "jaccard_bg"].to_numpy(float)
    other = scored.loc[~scored["headline"].astype(bool), "jaccard_bg"].to_numpy(float)
    fig = _figure(7, 3)
    ax = fig.add_subplot()
    ax.hist([honest, other], bins=np.linspace(0, 1, 21), stacked=True, color=[HEADLINE_COLOUR, OTHER_COLOUR],
            label=[f"headline ({honest.size})", f"excluded from headline ({other.size})"])
    ax.axvline(THRESHOLD_JACCARD, color="k", linestyle="--", linewidth=1)
    ax.text(THRESHOLD_JACCARD, ax.get_ylim()[1] * 0.95, " threshold 0.65", va="top", fontsize=8)
    ax.set(xlabel="Jaccard (255 as background)", ylabel="images", xlim=(0, 1))
    fig.legend(fontsize=8, loc="outside lower center", ncols=2, frameon=False)
    return figure_uri(fig)


def breakdown_uri(groups: Sequence[Mapping]) -> str:
    """Horizontal bars: mean Jaccard of the headline images and of all scored images, per group."""
    groups = list(groups)[:MAX_GROUPS]
    fig = _figure(5.5, 0.45 * len(groups) + 1.4)
    ax = fig.add_subplot()
    y = np.arange(len(groups))
    honest = [_nan(g["jaccard_bg_headline"]) for g in groups]
    everything = [_nan(g["jaccard_bg"]) for g in groups]
    ax.barh(y - 0.2, honest, height=0.4, color=HEADLINE_COLOUR, label="headline")
    ax.barh(y + 0.2, everything, height=0.4, color=OTHER_COLOUR, label="all scored")
    ax.set_yticks(y, [f"{g['group']} (n={g['n_headline']}/{g['n']})" for g in groups], fontsize=8)
    ax.invert_yaxis()
    ax.set(xlim=(0, 1), xlabel="mean Jaccard (255 as background)")
    fig.legend(fontsize=8, loc="outside lower center", ncols=2, frameon=False)
    return figure_uri(fig)


def _nan(value) -> float:
    return math.nan if value is None else float(value)


# ---------------------------------------------------------------------------------------------- the page

_CSS = """
body{font-family:DejaVu Sans,Helvetica,Arial,sans-serif;margin:24px;color:#1a1a1a;max-width:1150px}
h1{font-size:24px;margin-bottom:4px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}
h3{font-size:15px;margin:18px 0 4px}
table{border-collapse:collapse;margin:8px 0;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f0f0f0}
td.l,th.l{text-align:left}code{background:#f4f4f4;padding:1px 4px;font-size:12px;word-break:break-all}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:6px 10px;font-size:13px}
.grid{display:flex;flex-wrap:wrap;gap:12px}
figure{margin:0;max-width:530px;font-size:11px}figure img{display:block;max-width:100%;border:1px solid #999}
.warn{background:#fdecea;border-left:4px solid #c62828;padding:6px 10px;font-size:13px}
.legend span{display:inline-block;width:14px;height:4px;margin:0 4px 3px 10px;vertical-align:middle}
"""

_TREATMENT_TITLES = {"uncertain_as_background": "255 as background (official)",
                     "uncertain_ignored": "255 left out, &times; coverage"}


def escape(value) -> str:
    return html.escape(str(value), quote=True)


def number(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "&ndash;"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return f"{float(value):.{digits}f}"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], table_id: str | None = None,
           left: int = 1) -> str:
    """An HTML table; the first ``left`` columns are left-aligned text, cells are already escaped."""
    attr = f' id="{table_id}"' if table_id else ""
    head = "".join(f'<th class="l">{h}</th>' if i < left else f"<th>{h}</th>" for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(f'<td class="l">{c}</td>' if i < left else f"<td>{c}</td>"
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table{attr}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _headline_table(report: Mapping) -> str:
    columns = [(which, treatment) for which in ("headline", "all_scored") for treatment in _TREATMENT_TITLES]
    headers = ["metric"] + [f"{'headline' if w == 'headline' else 'all scored'}<br>{_TREATMENT_TITLES[t]}"
                            for w, t in columns]

    def cell(which: str, treatment: str, key: str) -> str:
        block = report.get(which) or {}
        return number((block.get(treatment) or {}).get(key))

    rows = [[m] + [cell(w, t, m) for w, t in columns] for m in METRIC_NAMES]
    rows.append(["uncertain fraction"] + [cell(w, t, "uncertain_fraction") for w, t in columns])
    rows.append(["coverage"] + [cell(w, t, "coverage") for w, t in columns])
    rows.append(["images"] + [cell(w, t, "n_images") for w, t in columns])
    rows.append(["jaccard 95% interval"] + [_ci_cell((report.get(w) or {}).get(t) or {}) for w, t in columns])
    return table(headers, rows, table_id="headline")


def _ci_cell(means: Mapping) -> str:
    """The bootstrap interval of the mean Jaccard (wsm.report.scoring.bootstrap_interval), or a dash."""
    ci = means.get("jaccard_ci95")
    return f"{number(ci[0], 3)}&ndash;{number(ci[1], 3)}" if ci else number(None)


def _breakdown_section(report: Mapping) -> str:
    titles = {"diagnosis": "Diagnosis (diagnosis_3, else diagnosis_1)", "image_type": "Image type",
              "lesion_size": "Lesion size (terciles of the official mask's lesion fraction)",
              "source": "Map source"}
    parts = []
    for key, title in titles.items():
        groups = report["breakdowns"].get(key) or []
        if not groups:
            continue
        rows = [[escape(g["group"]), number(g["n_headline"]), number(g["jaccard_bg_headline"]),
                 number(g["jaccard_ignore_headline"]), number(g["n"]), number(g["jaccard_bg"]),
                 number(g["jaccard_ignore"])] for g in groups]
        left_out = "255 left out &times; coverage"
        section = table(["group", "n headline", "Jaccard headline", f"Jaccard headline, {left_out}",
                         "n scored", "Jaccard scored", f"Jaccard scored, {left_out}"], rows)
        edges = report.get("lesion_size_edges") or []
        if key == "lesion_size" and len(edges) == 2:
            section += (f"<p>Cut points (lesion fraction of the official mask): small &le; {number(edges[0])} &lt; "
                      f"medium &le; {number(edges[1])} &lt; large.</p>")
        parts.append(f'<h3>{escape(title)}</h3><div class="grid"><img alt="{escape(key)} chart" '
                     f'src="{breakdown_uri(groups)}"><div>{section}</div></div>')
    return "".join(parts)


def bin_ranges(bins: Sequence[Mapping], min_digits: int = 3, max_digits: int = 17) -> tuple[list[str], int]:
    """The confidence range of each calibration bin as text, and the number of decimals used.

    The decimals follow the spread of the values: enough to resolve the smallest gap between two distinct bin
    ends, plus one (never fewer than ``min_digits``), and more while two distinct ends would still print alike, so
    a bin from 0.00101 to 0.00104 never reads ``0.001 - 0.001``. A bin whose confidences are all equal prints its
    one value.
    """
    ends = sorted({float(v) for b in bins for v in (b.get("confidence_min"), b.get("confidence_max"))
                   if v is not None and math.isfinite(float(v))})
    gaps = np.diff(np.asarray(ends, dtype=np.float64))
    gaps = gaps[gaps > 0]
    digits = min_digits
    if gaps.size:
        digits = max(min_digits, math.ceil(-math.log10(float(gaps.min()))) + 1)
    digits = min(digits, max_digits)
    while digits < max_digits and len({f"{v:.{digits}f}" for v in ends}) < len(ends):
        digits += 1
    out = []
    for b in bins:
        low, high = number(b.get("confidence_min"), digits), number(b.get("confidence_max"), digits)
        out.append(low if low == high else f"{low} &ndash; {high}")
    return out, digits


def _calibration_section(report: Mapping) -> str:
    cal = report["calibration"]
    bins = cal.get("bins") or []
    if not bins:
        if not (report.get("maps") or {}).get("fitting_known", True):
            return ("<p>No confidence scores: the maps have no WSM manifest, which is where <code>wsm generate</code> "
                    "records each map's confidence.</p>")
        return "<p>No headline images with a confidence score.</p>"
    ranges, digits = bin_ranges(bins)
    rows = [[number(b["bin"]), number(b["n"]), text, number(b["confidence_mean"], digits), number(b["jaccard_bg"]),
             number(b["jaccard_ignore"])] for b, text in zip(bins, ranges)]
    verdict = ""
    if len(bins) >= 2 and bins[0]["jaccard_bg"] is not None and bins[-1]["jaccard_bg"] is not None:
        lower = bins[0]["jaccard_bg"] < bins[-1]["jaccard_bg"]
        verdict = (f" The least confident bin has mean Jaccard {number(bins[0]['jaccard_bg'])}, the most confident "
                   f"{number(bins[-1]['jaccard_bg'])}: low confidence {'does' if lower else 'does not'} go with "
                   "low Jaccard here.")
    return (f"<p>Spearman correlation between confidence and Jaccard (255 as background) over {cal['n']} headline "
            f"images: <b>{number(cal['spearman'], 3)}</b>.{verdict}</p>"
            + table(["bin", "n", "confidence range", "mean confidence", "mean Jaccard",
                      "mean Jaccard, 255 left out &times; coverage"], rows, table_id="calibration", left=0))


def quality_uri(per_image: pd.DataFrame, assessment: Mapping) -> str:
    """Predicted against actual Jaccard of the headline maps, and the risk-coverage curve beside a perfect
    ranking's and a random one's."""
    honest = per_image[(per_image["status"] == "scored") & per_image["headline"].astype(bool)]
    fig = _figure(9, 3.6)
    scatter, curve = fig.subplots(1, 2)
    scatter.scatter(honest["predicted_jaccard"], honest["jaccard_bg"], s=8, color=HEADLINE_COLOUR, alpha=0.6)
    scatter.plot([0, 1], [0, 1], color="k", linewidth=0.8, linestyle=":")
    scatter.axhline(assessment["fail_below"], color="k", linestyle="--", linewidth=0.8)
    scatter.set(xlabel="predicted Jaccard", ylabel="Jaccard (255 as background)", xlim=(0, 1), ylim=(0, 1))
    coverage = np.arange(1, assessment["n"] + 1) / assessment["n"]
    curve.plot(coverage, assessment["curve"], color=HEADLINE_COLOUR, label=f"predicted (AURC {assessment['aurc']:.3f})")
    curve.plot(coverage, assessment["curve_oracle"], color="k", linestyle=":",
               label=f"perfect ranking ({assessment['aurc_oracle']:.3f})")
    curve.axhline(assessment["aurc_random"], color=OTHER_COLOUR, label=f"random ({assessment['aurc_random']:.3f})")
    curve.set(xlabel="coverage (maps kept, best predicted first)", ylabel="mean risk (1 - Jaccard)", xlim=(0, 1))
    curve.legend(fontsize=8, frameon=False)
    return figure_uri(fig)


def _predicted_quality_section(report: Mapping, per_image: pd.DataFrame) -> str:
    q = report.get("predicted_quality")
    if not q:
        return ("<p>No predicted quality: the maps' bundle has no quality model (<code>wsm fit</code> learns one "
                "when it calibrates on masks), or the maps have no WSM manifest.</p>")
    kept = f"{q['keep']:.0%}"
    honest = per_image[(per_image["status"] == "scored") & per_image["headline"].astype(bool)].dropna(
        subset=["predicted_jaccard"])
    miss = (honest["predicted_jaccard"] - honest["jaccard_bg"]).abs()
    wrong = honest.assign(miss=miss).nlargest(QUALITY_MISSES, "miss")
    rows = [[escape(r.isic_id), number(r.predicted_jaccard, 3), number(r.jaccard_bg, 3)] for r in wrong.itertuples()]
    return (f"<p>Each map's Jaccard as the bundle's quality model predicts it (learnt by <code>wsm fit</code> on its "
            f"calibration masks), against the truth, over {q['n']} headline maps: Spearman "
            f"<b>{number(q['spearman'], 3)}</b>. Of the {q['failing']} maps whose Jaccard is under {q['fail_below']}, "
            f"the prediction ranks them below the others with AUROC <b>{number(q['auroc_fail'], 3)}</b>; "
            f"{q['flagged']} maps are flagged (<code>predicted_fail</code>, predicted under {q['fail_below']}), of "
            f"which {_share(q['flag_precision'])} are under it (they find {_share(q['flag_recall'])} of those that "
            f"are). Keeping the {kept} predicted "
            f"best gives mean Jaccard <b>{number(q['mean_kept'], 3)}</b> (all maps {number(q['mean_all'], 3)}, a "
            f"perfect ranking {number(q['mean_kept_oracle'], 3)}); area under the risk-coverage curve "
            f"<b>{number(q['aurc'], 3)}</b> (perfect {number(q['aurc_oracle'], 3)}, random "
            f"{number(q['aurc_random'], 3)}).</p>"
            f'<img alt="predicted quality" src="{quality_uri(per_image, q)}">'
            "<p>The maps the estimate got most wrong:</p>"
            + table(["map", "predicted Jaccard", "Jaccard"], rows, table_id="quality-misses"))


def _share(fraction: float | None) -> str:
    return "&ndash;" if fraction is None else f"{fraction:.0%}"


def _gallery(ids: Sequence[str], per_image: pd.DataFrame, thumbnails: Mapping[str, str | None]) -> str:
    rows = per_image.set_index("isic_id")
    figures = []
    for isic_id in ids:
        row = rows.loc[isic_id]
        uri = thumbnails.get(isic_id)
        picture = f'<img alt="{escape(isic_id)}" src="{uri}">' if uri else "<p>(image unreadable)</p>"
        figures.append(
            f"<figure>{picture}<figcaption><b>{escape(isic_id)}</b> Jaccard {number(row['jaccard_bg'], 3)} "
            f"(255 left out &times; coverage {number(row['jaccard_ignore'], 3)}), "
            f"coverage {number(row['coverage'], 3)}, "
            f"confidence {number(row['confidence'], 3)}, {escape(row['diagnosis'])}</figcaption></figure>")
    return f'<div class="grid">{"".join(figures)}</div>'


def _listing(title: str, records: Sequence[Mapping], key: str) -> str:
    if not records:
        return ""
    rows = [[escape(r["isic_id"]), escape(r[key])] for r in records[:MAX_LISTED]]
    more = f"<p>and {len(records) - MAX_LISTED} more (see per_image.csv).</p>" if len(records) > MAX_LISTED else ""
    return f"<h2>{escape(title)} ({len(records)})</h2>" + table(["isic_id", key], rows, left=2) + more


def _codes(values: Sequence[str] | None) -> str:
    return "<br>".join(f"<code>{escape(v)}</code>" for v in values or []) or "&ndash;"


def _provenance(report: Mapping) -> str:
    """Where the maps and the masks came from, and when and by what the report was made."""
    maps = report.get("maps") or {}
    made = report.get("maps_provenance") or {}
    if maps.get("pipeline_name"):
        pipeline = escape(maps["pipeline_name"])
    elif maps.get("fitting_known", True):
        pipeline = "not recorded in the WSM folder (the pipeline sha256 below identifies the recipe)"
    else:
        pipeline = "unknown: maps made elsewhere (no WSM manifest)"
    rows = [["report made", escape(report.get("created") or "")],
            ["wsm version (this report)", escape(report["wsm_version"])],
            ["command", f"<code>{escape(report['command'])}</code>"],
            ["maps folder", f"<code>{escape(maps.get('folder', report.get('pred')))}</code>"],
            ["maps convention", escape(maps.get("convention_description", ""))],
            ["pipeline", pipeline],
            ["bundle", f"<code>{escape(maps['bundle'])}</code>" if maps.get("bundle") else "not recorded"],
            ["pipeline sha256", _codes(made.get("pipeline_sha256"))],
            ["model sha256", _codes(made.get("model_sha256"))],
            ["maps made by wsm", _codes(made.get("wsm_version"))],
            ["WSM manifest sha256", f"<code>{escape(report['wsm_manifest_sha256'])}</code>"],
            ["DATA folder", f"<code>{escape(report.get('data'))}</code>"],
            ["DATA manifest sha256", f"<code>{escape(report['data_manifest_sha256'])}</code>"],
            ["DATA gt manifest sha256", f"<code>{escape(report['gt_manifest_sha256'])}</code>"]]
    if report.get("fitted_ids"):
        rows.append(["--fitted-ids", f"{len(report['fitted_ids'])} isic_ids (listed in metrics.json)"])
    return table(["", ""], rows, left=2)


def render_report(report: Mapping, per_image: pd.DataFrame, thumbnails: Mapping[str, str | None]) -> str:
    """The whole page.

    Args:
        report: what metrics.json holds (see ``wsm.report.build_report``).
        per_image: what per_image.csv holds.
        thumbnails: isic_id -> data: URI (or None) for every gallery image.
    """
    counts = report["counts"]
    gallery = report["galleries"]
    maps = report.get("maps") or {}
    known = maps.get("fitting_known", True)
    fitted = len(report.get("fitted_ids") or [])
    if known and fitted:
        why = ("because fit used or may have used their mask (the WSM manifest's mask_used_in_fit, a null counted "
               f"as used, and the {fitted} ids of <code>--fitted-ids</code>)")
    elif known:
        why = "because fit used their mask (or the WSM manifest does not say)"
    else:
        why = "because <code>--fitted-ids</code> lists them as fitted"
    chosen = ("whose official mask fit did not use" if known else
              "not listed in <code>--fitted-ids</code> (nothing else says which masks fitted them)")
    excluded = (f"<p class=\"note\">Headline: {counts['headline']} images whose map is a weak map and {chosen}. "
                f"Excluded: <b>{counts['excluded_mask_used_in_fit']}</b> {why}, "
                f"<b>{counts['excluded_official_source']}</b> because the map is the official mask "
                "(<code>--prefer-official</code>). Numbers on masks used in fitting do not count.</p>")
    warning = ("" if known else f'<p class="warn" id="not-held-out"><b>Not known to be held out.</b> '
               f"{escape(maps.get('fitting', ''))}</p>")
    excluded += "".join(f'<p class="note">{escape(n)}</p>' for n in maps.get("notes") or [])
    if not report.get("headline"):
        excluded += "<p class=\"note\"><b>No headline numbers:</b> no scored image qualifies.</p>"
    count_rows = [[escape(k.replace("_", " ")), number(v)] for k, v in counts.items() if not isinstance(v, dict)]
    has_scores = counts["scored"] > 0
    band = f"rgba({YELLOW[0]},{YELLOW[1]},{YELLOW[2]},{BAND_ALPHA + 0.2:.2f})"
    legend = (f'<p class="legend">Left: the image; right: the same with the contours of'
              f'<span style="background:rgb{GREEN}"></span>the official mask'
              f'<span style="background:rgb{RED}"></span>the map\'s lesion'
              f'<span style="background:{band};height:10px;outline:1px solid rgb{YELLOW}"></span>the uncertain '
              f"band (255): a thin outline and a light tint. Chosen from the {escape(gallery['from'])} images by "
              "Jaccard "
              "(255 as background).</p>")
    body = [
        "<h1>wsm report</h1>",
        f"<p>Split <b>{escape(report['split'])}</b>: {counts['scored']} maps scored against their official masks "
        f"with the official ISIC metrics (isic-challenge-scoring 5.6.0), the uncertain pixels (255) both as "
        "background and left out.</p>",
        f"<p>Maps <code>{escape(maps.get('folder', report.get('pred')))}</code> "
        f"({escape(maps.get('convention_description', 'ISIC_WSM'))}); official masks of "
        f"{escape(_datasets(counts))} from <code>{escape(report.get('data'))}</code>; made {escape(report.get('created', ''))} by wsm "
        f"{escape(report['wsm_version'])}.</p>",
        warning,
        f'<p class="note" id="left-out">{escape(report["uncertain_ignored_definition"])}</p>',
        excluded,
        f"<h2>Headline{'' if known else ' (not known to be held out)'}</h2>", _headline_table(report),
        "<h2>Counts</h2>", table(["", "images"], count_rows),
    ]
    if has_scores:
        body += ["<h2>Per-image Jaccard</h2>", f'<img alt="Jaccard histogram" src="{histogram_uri(per_image)}">',
                 "<h2>Breakdowns</h2>", _breakdown_section(report),
                 "<h2>Confidence calibration</h2>", _calibration_section(report),
                 "<h2>Predicted quality</h2>", _predicted_quality_section(report, per_image),
                 f"<h2>Best {len(gallery['best'])}</h2>", legend, _gallery(gallery["best"], per_image, thumbnails),
                 f"<h2>Worst {len(gallery['worst'])}</h2>", legend,
                 _gallery(gallery["worst"], per_image, thumbnails)]
    body += [_listing("Images with a mask but no map", report["missing"], "reason"),
             _listing("Errors", report["errors"], "error"),
             "<h2>Provenance</h2>", _provenance(report)]
    return page("wsm report", body)


def page(title: str, body: Sequence[str]) -> str:
    """A self-contained HTML page in the report's style around ``body`` (already escaped HTML parts)."""
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _datasets(counts: dict) -> str:
    """The datasets the masks come from, with how many each (``ph2 (16)``); older reports have no such count."""
    return ", ".join(f"{name} ({n})" for name, n in (counts.get("datasets") or {}).items()) or "the DATA folder"
