"""The archive's own metadata vocabulary, from its schema package ``isic-metadata``: the diagnosis hierarchy and the
image types. `wsm import` checks a user's labels against it instead of keeping lists of its own.
"""
from __future__ import annotations

from functools import lru_cache

from isic_metadata.metadata import DiagnosisEnum, ImageTypeEnum

__all__ = ["IMAGE_TYPES", "archive_diagnosis", "check_metadata_value"]

IMAGE_TYPES = tuple(t.value for t in ImageTypeEnum)
DIAGNOSIS_DEPTH = 5             # diagnosis_1 .. diagnosis_5

# Everyday names of a diagnosis -> the archive's term for it (what other datasets' label files say).
_COMMON_NAMES = {
    "melanoma": "Melanoma, NOS",
    "mel": "Melanoma, NOS",
    "naevus": "Nevus",
    "common nevus": "Nevus",
    "common naevus": "Nevus",
    "nv": "Nevus",
    "atypical nevus": "Nevus, Atypical",
    "atypical naevus": "Nevus, Atypical",
    "dysplastic nevus": "Nevus, Dysplastic",
    "seborrhoeic keratosis": "Seborrheic keratosis",
    "bcc": "Basal cell carcinoma",
    "actinic keratosis": "Solar or actinic keratosis",
    "angioma": "Hemangioma",
    "squamous cell carcinoma": "Squamous cell carcinoma, NOS",
    "scc": "Squamous cell carcinoma, NOS",
    "lentigo": "Lentigo NOS",
}


@lru_cache(maxsize=1)
def _paths_by_term() -> dict[str, tuple[str, ...]]:
    """Each term of the hierarchy (lower case) -> its path from diagnosis_1 down (terms are unique)."""
    return {d.value.split(":")[-1].lower(): tuple(d.value.split(":")) for d in DiagnosisEnum}


def archive_diagnosis(name: str) -> tuple[str, ...] | None:
    """diagnosis_1, diagnosis_2, ... for a diagnosis named by its archive term (any case) or a common name
    (``melanoma``, ``atypical nevus``); None when the archive's hierarchy has no such diagnosis."""
    key = " ".join(name.split()).lower()
    key = _COMMON_NAMES.get(key, key).lower()
    return _paths_by_term().get(key)


@lru_cache(maxsize=1)
def _diagnosis_paths() -> tuple[tuple[str, ...], ...]:
    return tuple(tuple(d.value.split(":")) for d in DiagnosisEnum)


def _in_hierarchy(levels: dict[int, str]) -> bool:
    """Whether one path of the hierarchy has each given term at its level (levels may be skipped)."""
    return any(all(len(path) > k and path[k] == term for k, term in levels.items()) for path in _diagnosis_paths())


# Fields checked against the archive's choices; anatomical sites are not, as older metadata used other names.
_CHOICES = {
    "image_type": IMAGE_TYPES,
    "sex": ("male", "female"),
}


def check_metadata_value(fields: dict[str, str]) -> None:
    """Raise ValueError naming the first field whose value the archive's schema does not allow: diagnosis_1..5
    (terms of one path of the hierarchy, each at its level), image_type, sex, age_approx."""
    levels = {k: fields[f"diagnosis_{k + 1}"] for k in range(DIAGNOSIS_DEPTH) if fields.get(f"diagnosis_{k + 1}")}
    if levels and not _in_hierarchy(levels):
        given = ", ".join(f"diagnosis_{k + 1}={term!r}" for k, term in levels.items())
        raise ValueError(f"{given} is not in the archive's diagnosis hierarchy (isic-metadata); check the spelling, "
                         "or give the diagnosis in a plain 'diagnosis' column")
    for field, choices in _CHOICES.items():
        value = fields.get(field)
        if value and value not in choices:
            raise ValueError(f"{field}={value!r}, expected one of {', '.join(choices)}")
    age = fields.get("age_approx")
    if age and not _is_age(age):
        raise ValueError(f"age_approx={age!r}, expected a whole number of years from 0 to 120")


def _is_age(text: str) -> bool:
    try:
        years = float(text)
    except ValueError:
        return False
    return years.is_integer() and 0 <= years <= 120
