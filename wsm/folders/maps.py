"""The maps `wsm report` scores and `wsm train --labels DIR` learns from: a WSM folder from `wsm generate` (its
manifest says which masks fitted what), or any folder of maps made elsewhere, in the ISIC_WSM or the challenge
convention; and the errors that point a user who gave the wrong folder to the right one."""
from __future__ import annotations

import logging
import math
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from archive_client.ids import IMAGE_ID, safe_image_id
from archive_client.layout import DataLayout
from wsm.errors import WsmError
from wsm.folders.wsm_folder import REWRITE_WSM_MANIFEST, WsmFolder
from wsm.io.images import CHALLENGE, ISIC_WSM, read_label_map
from wsm.io.images import read_lesion_map as read_map  # noqa: F401 - the one reader of maps, for the report's modules
from wsm.io.tables import read_frame
from wsm.selection import DataError, read_manifest

log = logging.getLogger(__name__)


class ReportError(WsmError, ValueError):
    """A WSM or DATA folder that a report cannot be made from."""


CONVENTIONS = {
    ISIC_WSM: "ISIC_WSM maps: ISIC_x.png, 0 background, 1 lesion, 255 uncertain",
    CHALLENGE: "challenge-style masks: ISIC_x_segmentation.png, 0 background, 255 lesion (no uncertain pixels)",
}

# <id>.png or <id>_segmentation.png, for archive ids and a dataset's own (IMD002.png); the shortest id first, so
# that a _segmentation suffix is read as the challenge convention
_MAP_NAME = re.compile(rf"({IMAGE_ID.pattern}?)(_[Ss]egmentation)?\.[Pp][Nn][Gg]")

MAP_COLUMNS = ["isic_id", "path", "status", "source", "confidence", "mask_used_in_fit", "error", "predicted_jaccard"]
OPTIONAL_COLUMNS = ("error", "predicted_jaccard")       # absent from older manifests: empty
SCORED_COLUMNS = frozenset(MAP_COLUMNS) - set(OPTIONAL_COLUMNS)   # what a report needs of a WSM manifest

_BUNDLE_FILES = ("pipeline.toml", "provenance.json")   # what `wsm fit` writes into every BUNDLE (wsm.folders.bundle)

_EXPECTED = ("manifest.parquet and ISIC_x.png maps from `wsm generate`, or maps made elsewhere: ISIC_x.png "
             "(ISIC_WSM: 0 background, 1 lesion, 255 uncertain) or ISIC_x_segmentation.png (challenge: 0/255)")



@dataclass(frozen=True)
class MapsFolder:
    """A folder of maps to score: its convention, one row per map, and whether a WSM manifest vouches for them."""

    root: Path
    convention: str                 # ISIC_WSM or CHALLENGE
    rows: pd.DataFrame              # MAP_COLUMNS (and the WSM manifest's provenance columns where there is one)
    manifest: Path | None           # WSM/manifest.parquet; None: maps made elsewhere, whose fitting is unknown
    notes: tuple[str, ...] = ()

    @property
    def fitting_known(self) -> bool:
        """Whether a WSM manifest says which maps were fitted to their own official mask."""
        return self.manifest is not None



def images_phrase(n: int) -> str:
    """'1 image', '3 images'."""
    return f"{n} image{'' if n == 1 else 's'}"



def read_wsm_manifest(pred: Path, needed: frozenset[str] = SCORED_COLUMNS) -> pd.DataFrame:
    """WSM/manifest.parquet, one row per isic_id (the last one where a merge left several); ``needed``: the
    columns it must have."""
    try:
        manifest = WsmFolder(pred).merged_manifest()
    except DataError as err:
        raise ReportError(str(err)) from None
    if manifest is None:
        raise ReportError(f"{WsmFolder(pred).manifest} does not exist; write maps with `wsm generate --out {pred}` "
                          "first")
    rows = read_frame(manifest, remedy=REWRITE_WSM_MANIFEST)
    if not needed <= set(rows.columns):
        layout = DataLayout(pred)
        if layout.images.is_dir() or layout.gt_manifest.exists():
            raise ReportError(f"{pred} is a DATA folder (from `wsm download` or `wsm import`), not maps: give "
                              f"-m/--maps the folder `wsm generate --data {pred} --bundle BUNDLE --out WSM` wrote, "
                              f"and -d/--data {pred}")
        raise ReportError(f"{manifest} lacks the columns {sorted(needed - set(rows.columns))}; "
                          "it is not a WSM manifest written by `wsm generate`")
    for column in OPTIONAL_COLUMNS:
        if column not in rows.columns:
            rows[column] = None
    return rows.drop_duplicates("isic_id", keep="last").reset_index(drop=True)



def read_maps(pred: Path | str, data: Path | str | None = None,
              needed: frozenset[str] = SCORED_COLUMNS) -> MapsFolder:
    """The maps of a folder: a WSM folder (its manifest), or a folder of maps made elsewhere, in either convention.

    ``needed``: the columns a WSM manifest must have. Without a manifest, every ``ISIC_x.png`` (ISIC_WSM) or every
    ``ISIC_x_segmentation.png`` (challenge) at the top of the folder is a map, ``source`` "weak", with no confidence
    and unknown fitting (``mask_used_in_fit`` null).

    Raises:
        ReportError: the folder is absent, a BUNDLE, a DATA folder, holds only shards' manifests, mixes the two
            conventions (by name, or challenge-style masks named ISIC_x.png), holds no maps, or names maps outside
            itself (a link out, ``../x`` or an absolute path in the manifest); each message says what to do.
    """
    pred = Path(pred)
    generate = f"`wsm generate --data {data or 'DATA'} --bundle BUNDLE --out {pred}`"
    if not pred.exists():
        raise ReportError(f"{pred} does not exist; give -m/--maps a folder of maps: write them with {generate}, or "
                          f"point it at maps made elsewhere (ISIC_x.png 0/1/255, or ISIC_x_segmentation.png 0/255)")
    if not pred.is_dir():
        raise ReportError(f"{pred} is a file; give -m/--maps the folder that holds the maps ({_EXPECTED})")
    try:
        manifest = WsmFolder(pred).merged_manifest()
    except DataError as err:
        raise ReportError(str(err)) from None
    if manifest is not None:
        rows = read_wsm_manifest(pred, needed)
        _check_inside(WsmFolder(pred), rows["path"].dropna())
        return MapsFolder(pred, ISIC_WSM, rows, manifest)
    if all((pred / name).is_file() for name in _BUNDLE_FILES):
        data_flag = data or "DATA"
        raise ReportError(f"{pred} is a BUNDLE written by `wsm fit` ({', '.join(_BUNDLE_FILES)}), not maps: make "
                          f"the maps with `wsm generate --data {data_flag} --bundle {pred} --out WSM`, then score "
                          f"them with `wsm report --maps WSM --data {data_flag} --out REPORT`")
    found: dict[str, dict[str, str]] = {ISIC_WSM: {}, CHALLENGE: {}}
    others = []
    known = _data_ids(data)
    with os.scandir(pred) as entries:
        for entry in entries:
            match = _MAP_NAME.fullmatch(entry.name)
            image_id = match.group(1) if match else None
            if image_id and safe_image_id(image_id) and (known is None or image_id in known) and entry.is_file():
                found[CHALLENGE if match.group(2) else ISIC_WSM][match.group(1)] = entry.name
            elif len(others) < 5 and not entry.name.startswith("."):
                others.append(entry.name)
    wsm_maps, challenge_maps = found[ISIC_WSM], found[CHALLENGE]
    _check_inside(WsmFolder(pred), [*wsm_maps.values(), *challenge_maps.values()])
    if wsm_maps and challenge_maps:
        raise ReportError(
            f"{pred} mixes two conventions: {len(wsm_maps)} ISIC_WSM maps (e.g. {min(wsm_maps.values())}: 0/1/255) "
            f"and {len(challenge_maps)} challenge-style masks (e.g. {min(challenge_maps.values())}: 0/255); a "
            "folder holds one kind: move one kind to its own folder and report each folder on its own")
    if not wsm_maps and not challenge_maps:
        held = f"it holds {', '.join(sorted(others))}{' ...' if len(others) == 5 else ''}" if others else "it is empty"
        raise ReportError(f"{pred} holds no maps ({held}); expected {_EXPECTED}. Write maps with {generate}")
    convention = ISIC_WSM if wsm_maps else CHALLENGE
    if wsm_maps:
        _check_one_convention(pred, wsm_maps)
    names = wsm_maps or challenge_maps
    ids = sorted(names)
    rows = pd.DataFrame({"isic_id": ids, "path": [names[i] for i in ids], "status": "ok", "source": "weak",
                         "confidence": math.nan, "mask_used_in_fit": pd.Series([None] * len(ids), dtype=object),
                         "error": pd.Series([None] * len(ids), dtype=object), "predicted_jaccard": math.nan},
                        columns=MAP_COLUMNS)
    notes = []
    if WsmFolder(pred).journals():
        notes.append(f"{pred} holds the journals of a `wsm generate` run that has not finished (no manifest.parquet "
                     "yet): rerun that command to finish it; its manifest says which maps were fitted to their mask")
    return MapsFolder(pred, convention, rows, None, tuple(notes))


def _check_inside(folder: WsmFolder, paths) -> None:
    """Refuse a folder whose manifest or files point outside it (``../x``, an absolute path, a link out)."""
    try:
        for path in paths:
            folder.inside(path)
    except DataError as err:
        raise ReportError(str(err)) from None


def _check_one_convention(pred: Path, wsm_maps: dict[str, str]) -> None:
    """ISIC_x.png maps made elsewhere are read as ISIC_WSM maps, where 255 means uncertain: refuse a folder whose
    maps are, all or in part, challenge-style masks (0 background, 255 lesion) under that name, which would score
    as empty. Every map is read: a map with a lesion pixel (1) is an ISIC_WSM map, one with 255 and no 1 looks
    like a challenge mask. Unreadable files are left to the scoring, which reports them as ``error`` rows."""
    lesion, mask_like = [], []
    for isic_id in sorted(wsm_maps):
        try:
            values = read_label_map(pred / wsm_maps[isic_id])
        except (OSError, ValueError, WsmError):
            continue
        if (values == 1).any():
            lesion.append(wsm_maps[isic_id])
        elif (values == 255).any():
            mask_like.append(wsm_maps[isic_id])
    rename = ("rename them ISIC_x_segmentation.png (for f in ISIC_*.png; do mv \"$f\" \"${f%.png}_segmentation.png\"; "
              "done) so that 255 reads as lesion")
    if mask_like and not lesion:
        raise ReportError(
            f"{pred}: none of its {len(mask_like)} ISIC_x.png maps with 255 has a lesion pixel (1), only 0 and 255: "
            "they look like challenge-style masks (0 background, 255 lesion) named as ISIC_WSM maps, where 255 "
            f"means uncertain. If they are, {rename}")
    if mask_like:
        raise ReportError(
            f"{pred} mixes {len(lesion)} ISIC_WSM maps with a lesion pixel (1; e.g. {lesion[0]}) and "
            f"{len(mask_like)} maps with only 0 and 255 (e.g. {mask_like[0]}), which look like challenge-style "
            "masks (255 lesion) but would read as ISIC_WSM maps (255 uncertain): a folder holds one kind. Move "
            "the 0/255 masks to a folder of their own and rename them ISIC_x_segmentation.png; if they are "
            "ISIC_WSM maps without lesion, score the folder with the manifest `wsm generate` wrote beside them")


def made_with(pred: Path) -> dict:
    """The pipeline name and bundle folder that made a WSM folder's maps, as `wsm generate` recorded them, or as
    the bundle `generate` fitted into WSM/bundle says ({} when nothing says: the manifest's pipeline_sha256 still
    identifies the recipe)."""
    recorded = WsmFolder(pred).made_with()
    inner = pred / "bundle" / "pipeline.toml"
    if not recorded.get("pipeline") and inner.is_file():
        try:
            recorded = {"bundle": str(inner.parent), "pipeline": tomllib.loads(inner.read_text(encoding="utf8"))["name"]}
        except (OSError, ValueError, KeyError) as err:      # tomllib's decode errors are ValueErrors
            log.warning("%s: cannot read the pipeline's name (%s)", inner, err)
    return {k: str(recorded[k]) for k in ("pipeline", "bundle") if recorded.get(k)}


def _data_ids(data: Path | str | None) -> set[str] | None:
    """The image ids of DATA, to tell maps from other PNG files in a folder; None when no DATA is known."""
    if data is None or not DataLayout(Path(data)).manifest.exists():
        return None
    return set(read_manifest(data)["isic_id"])
