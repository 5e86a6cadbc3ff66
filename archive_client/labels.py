"""Label files for `wsm import`: per-image metadata, and optionally the image and mask files themselves.

A labels file is a CSV (UTF-8) or an Excel sheet (.xlsx, the first sheet; the header row is the first one that
names an id column, so a legend above it is skipped). Columns:

    id       isic_id, image_id or "Image Name" (PH2); without one, the file name of the ``image`` column
    image, mask   file paths, relative to the labels file's folder: where the images and masks are when
             `wsm import` is given no folders
    diagnosis_1..5  the archive's diagnosis hierarchy (metadata.csv), checked against the archive's schema
    diagnosis     a plain diagnosis (``melanoma``, ``atypical nevus``): mapped onto the archive's hierarchy where
             it names one of its terms, and kept as given in the ``diagnosis`` column either way
    one column per diagnosis marked X or 1 (PH2's "Common Nevus", "Atypical Nevus", "Melanoma")
    melanoma, seborrheic_keratosis   the ISIC 2017 Part 3 ground truth (0/1; both 0 is a nevus)
    image_type, sex, age_approx, ...   other metadata, kept; image_type, sex and age_approx are checked

A row that fails a check is listed with the reason and not used; nothing else of it is imported.
"""
from __future__ import annotations

import csv
import re
from collections import Counter
from itertools import zip_longest
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InvalidInputError
from .ids import check_image_id, image_id_of
from .vocabulary import archive_diagnosis, check_metadata_value

__all__ = ["Labels", "PART3_DIAGNOSIS", "part3_diagnosis", "read_labels"]

# ISIC 2017 Part 3 labels -> the archive's diagnosis hierarchy (diagnosis_1, diagnosis_2, diagnosis_3).
PART3_DIAGNOSIS = {
    "melanoma": ("Malignant", "Malignant melanocytic proliferations (Melanoma)", "Melanoma, NOS"),
    "seborrheic_keratosis": ("Benign", "Benign epidermal proliferations", "Seborrheic keratosis"),
    "neither": ("Benign", "Benign melanocytic proliferations", "Nevus"),
}
_PART3_COLUMNS = ("melanoma", "seborrheic_keratosis")
_DIAGNOSIS_COLUMN = re.compile(r"diagnosis_[1-5]")
_ID_COLUMNS = ("isic_id", "image_id", "image_name")     # ISIC 2017's ground truth says image_id, PH2 "Image Name"
_FILE_COLUMNS = ("image", "mask")
# Columns that would overwrite what import measures on the files itself, or that describe the mask file.
_MEASURED_COLUMNS = {"file", "bytes", "sha256", "width", "height", "source_url", "pixels_x", "pixels_y",
                     "mask_mode", "mask_fg_fraction"}
# Names matched in any case and spacing ("Diagnosis", "Image Type").
_KNOWN_COLUMNS = {*_ID_COLUMNS, *_FILE_COLUMNS, "diagnosis", *(f"diagnosis_{i}" for i in range(1, 6)), "image_type",
                  "sex", "age_approx", "anatom_site_general", "copyright_license", "attribution", *_PART3_COLUMNS}
# Names wsm gives columns of its own (the official masks' table, the maps' manifest): a label column so named is
# stored as label_<name>, so that it never stands in for wsm's.
_RESERVED_COLUMNS = {"split", "challenge", "mask_file", "mask_width", "mask_height", "path", "status", "source",
                     "confidence", "error", "agreement", "mask_used_in_fit", "lesion_fraction", "uncertain_fraction",
                     "predicted_jaccard", "predicted_fail", "pipeline_sha256", "model_sha256", "wsm_version",
                     "image_bytes", "headline"}
_MARKS = {"x", "1", "yes", "true"}
_BLANKS = {"", "0", "no", "false", "nan"}


@dataclass
class Labels:
    by_id: dict[str, dict[str, str]] = field(default_factory=dict)   # image id -> metadata fields
    files: dict[str, tuple[Path | None, Path | None]] = field(default_factory=dict)   # id -> (image, mask) given
    rejected: list[tuple[str, str]] = field(default_factory=list)
    ignored_columns: list[str] = field(default_factory=list)
    renamed_columns: dict[str, str] = field(default_factory=dict)   # a reserved name -> the name it is stored as


def read_labels(path: Path) -> Labels:
    """Per-image metadata (and files) from a labels CSV or .xlsx (see the module doc); bad rows are listed, not
    fatal; a file that cannot be read as a table with an id column raises InvalidInputError."""
    if not path.is_file():
        raise InvalidInputError(f"the labels file {path} does not exist or is not a file; pass a CSV to --labels")
    try:
        header, rows = _table(path)
        return _parse(path, header, rows)
    except (UnicodeDecodeError, csv.Error) as err:
        raise InvalidInputError(f"the labels file {path} is not a UTF-8 CSV ({err}); save it as CSV, UTF-8") from err


# --------------------------------------------------------------------------------------------- reading

def _column_name(text: object) -> str:
    """A header cell as a column name: trimmed; the names wsm knows in lower snake case (``Image Name`` ->
    image_name, ``Diagnosis`` -> diagnosis)."""
    name = "" if text is None else str(text).strip()
    snake = re.sub(r"\s+", "_", name.lower())
    return snake if snake in _KNOWN_COLUMNS else name


def _stored_name(column: str) -> str:
    return f"label_{column}" if column.lower() in _RESERVED_COLUMNS else column


def _table(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header and the (line number, cells) of each row of a CSV or the first sheet of an .xlsx."""
    if path.suffix.lower() == ".xlsx":
        return _sheet(path)
    with open(path, newline="", encoding="utf-8-sig") as fh:
        lines = list(csv.reader(fh))
    if not lines:
        return [], []
    return [_column_name(c) for c in lines[0]], list(enumerate(lines[1:], start=2))


def _sheet(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """An Excel sheet as a table whose header is the first row naming an id column; where the row under it
    names the columns the header leaves blank (a merged "Clinical Diagnosis" over "Melanoma", ...), those too."""
    import openpyxl

    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as err:       # openpyxl raises zipfile, KeyError and XML errors for a broken file
        raise InvalidInputError(f"the labels file {path} is not a readable .xlsx workbook ({err}); save it again "
                                "from a spreadsheet program, or as CSV") from err
    sheet = book.worksheets[0].iter_rows(values_only=True)
    cells = [["" if v is None else str(v).strip() for v in row] for row in sheet]
    book.close()
    naming = (*_ID_COLUMNS, "image")
    top = next((i for i, row in enumerate(cells) if any(_column_name(c) in naming for c in row)), None)
    if top is None:
        return [], []
    header = [_column_name(c) for c in cells[top]]
    below = cells[top + 1] if top + 1 < len(cells) else []
    if _second_header(header, below):
        header = [_column_name(b) if b else h for h, b in zip_longest(header, below, fillvalue="")]
        top += 1
    return header, [(top + 2 + i, row) for i, row in enumerate(cells[top + 1:])]


def _second_header(header: list[str], below: list[str]) -> bool:
    """Whether the row under the header names the columns of merged header cells (PH2: "Clinical Diagnosis" over
    "Common Nevus", "Atypical Nevus", "Melanoma"): text under blank header cells, nothing under the id column, and
    no value that looks like data (a number, a mark)."""
    named = [(h, b) for h, b in zip_longest(header, below, fillvalue="") if b]
    under_blank = any(not h for h, _ in named)
    under_id = any(h in (*_ID_COLUMNS, "image") for h, _ in named)
    data_like = any(_is_number(b) or b.lower() in _MARKS for _, b in named)
    return under_blank and not under_id and not data_like


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------------------------- parsing

@dataclass(frozen=True)
class _Columns:
    id: str | None
    files: tuple[str, ...]             # of "image", "mask"
    keep: tuple[str, ...]              # metadata columns kept as they are
    part3: bool
    one_hot: dict[str, tuple[str, ...]]   # column -> diagnosis path, for columns marked X / 1


def _classify(header: list[str], rows: list[tuple[int, list[str]]]) -> _Columns:
    id_column = next((c for c in _ID_COLUMNS if c in header), None)
    others = [c for c in header if c and c != id_column]
    archive_style = any(_DIAGNOSIS_COLUMN.fullmatch(c) for c in others)
    part3 = not archive_style and all(c in others for c in _PART3_COLUMNS)
    one_hot = {} if archive_style or part3 else _one_hot_columns(header, rows)
    files = tuple(c for c in _FILE_COLUMNS if c in others)
    if part3:
        keep = [c for c in others if c in ("image_type", "copyright_license", "attribution")]
    else:
        keep = [c for c in others if c not in _MEASURED_COLUMNS and c not in files and c not in one_hot]
    return _Columns(id_column, files, tuple(keep), part3, one_hot)


def _one_hot_columns(header: list[str], rows: list[tuple[int, list[str]]]) -> dict[str, tuple[str, ...]]:
    """Columns named after a diagnosis whose cells are only marks (X, 1) or blanks."""
    found = {}
    for i, name in enumerate(header):
        path = archive_diagnosis(name) if name else None
        values = {(cells[i] if i < len(cells) else "").strip().lower() for _, cells in rows}
        if path and values <= _MARKS | _BLANKS and values & _MARKS:
            found[name] = path
    return found


def _parse(path: Path, header: list[str], rows: list[tuple[int, list[str]]]) -> Labels:
    named = [c for c in header if c]
    counts = Counter(c.lower() for c in named)
    twice = sorted({c for c in named if counts[c.lower()] > 1})
    if twice:
        raise InvalidInputError(f"{path}: the column(s) {twice} appear more than once; give each column one name")
    columns = _classify(header, rows)
    if columns.id is None and "image" not in columns.files:
        raise InvalidInputError(f"{path}: no isic_id, image_id or image column; its columns are "
                                f"{named}; name the image id column isic_id or image_id")
    labels = Labels(renamed_columns={c: _stored_name(c) for c in columns.keep if _stored_name(c) != c})
    last = max(i for i, c in enumerate(header) if c)
    labels.ignored_columns = [c for c in header if c and c not in (columns.id, *columns.files, *columns.keep,
                                                                   *columns.one_hot)
                              and not (columns.part3 and c in _PART3_COLUMNS)]
    for line, cells in rows:
        if not any(c.strip() for c in cells):
            continue
        where = f"{path.name}:{line}"
        row = {name: (cells[i] if i < len(cells) else None) for i, name in enumerate(header) if name}
        try:
            if len(cells) <= last:
                raise ValueError(f"has {len(cells)} of the {last + 1} columns (a cut or broken line)")
            if any(c.strip() for c in cells[len(header):]):
                raise ValueError(f"has {len(cells)} cells for {len(header)} columns (a value with an unquoted comma?)")
            image_id, files = _id_and_files(row, columns, path.parent)
            fields = _fields(row, columns)
            check_metadata_value(fields)
        except ValueError as err:
            labels.rejected.append((where, str(err)))
            continue
        if image_id in labels.by_id:
            labels.rejected.append((where, f"second row for {image_id}; the first one is used"))
            continue
        labels.by_id[image_id] = fields
        if files != (None, None):
            labels.files[image_id] = files
    return labels


def _id_and_files(row: dict, columns: _Columns, folder: Path) -> tuple[str, tuple[Path | None, Path | None]]:
    files = tuple(_file(row.get(name), folder, name) if name in columns.files else None for name in _FILE_COLUMNS)
    if columns.id is not None:
        image_id = (row.get(columns.id) or "").strip()
    else:
        image_id = (image_id_of(files[0].name) or files[0].stem) if files[0] is not None else ""   # as a folder
    if not image_id.isascii():
        raise ValueError(f"refusing image id {image_id!r}: non-ASCII characters")
    return check_image_id(image_id), files


def _file(value: str | None, folder: Path, column: str) -> Path | None:
    text = (value or "").strip()
    if not text:
        return None
    path = folder / text
    if not path.is_file():
        raise ValueError(f"its {column} file {text!r} does not exist (paths are relative to the labels file)")
    return path


def _fields(row: dict, columns: _Columns) -> dict[str, str]:
    fields = {_stored_name(c): row[c].strip() for c in columns.keep if isinstance(row.get(c), str) and row[c].strip()}
    if columns.part3:
        diagnosis = part3_diagnosis(*(_flag(row.get(c), c) for c in _PART3_COLUMNS))
        if diagnosis:
            fields.update(_levels(diagnosis))
    marked = [path for name, path in columns.one_hot.items() if (row.get(name) or "").strip().lower() in _MARKS]
    if len(marked) > 1:
        raise ValueError(f"marks {len(marked)} diagnoses ({', '.join(p[-1] for p in marked)}); one is expected")
    if marked:
        fields.update(_levels(marked[0]))
    plain = fields.get("diagnosis")
    if plain and not any(_DIAGNOSIS_COLUMN.fullmatch(c) for c in fields):
        fields.update(_levels(archive_diagnosis(plain) or ()))
    return fields


def _levels(path: tuple[str, ...]) -> dict[str, str]:
    """diagnosis_1.. of a hierarchy path (the archive's columns stop at diagnosis_5)."""
    return {f"diagnosis_{k}": term for k, term in enumerate(path[:5], start=1)}


def _flag(value: str | None, column: str) -> int | None:
    """0 / 1 from '0', '1', '0.0', '1.0'; None when empty; ValueError otherwise."""
    text = (value or "").strip()
    if text == "" or text.lower() == "nan":
        return None
    try:
        number = float(text)
    except ValueError:
        number = -1.0
    if number not in (0.0, 1.0):
        raise ValueError(f"{column}={value!r}, expected 0, 1 or empty")
    return int(number)


def part3_diagnosis(melanoma: int | None, seborrheic_keratosis: int | None) -> tuple[str, str, str] | None:
    """diagnosis_1..3 for ISIC 2017 Part 3 labels; None when unknown; ValueError when both are 1."""
    if melanoma == 1 and seborrheic_keratosis == 1:
        raise ValueError("melanoma and seborrheic_keratosis are both 1; the 2017 classes are exclusive")
    if melanoma == 1:
        return PART3_DIAGNOSIS["melanoma"]
    if seborrheic_keratosis == 1:
        return PART3_DIAGNOSIS["seborrheic_keratosis"]
    if melanoma == 0 and seborrheic_keratosis == 0:
        return PART3_DIAGNOSIS["neither"]
    return None

