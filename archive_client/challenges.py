"""The official challenge datasets that carry lesion masks (the archive API serves none).

What was known when this was written (ISIC 2016-2018 challenge pages and the S3 listing):
zips live under https://isic-archive.s3.amazonaws.com/challenges/<year>/; image counts per split are
2016 900/-/379, 2017 2000/150/600, 2018 2594/100/1000. Each ground-truth zip holds one folder named like
the zip, with ISIC_ddddddd_segmentation.png masks (2016: _Segmentation), 8-bit, 0 background, 255 lesion,
the same size as the image. The base URL is configurable (`--challenge-url`, env WSM_CHALLENGE_URL).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

DEFAULT_CHALLENGE_URL = os.environ.get("WSM_CHALLENGE_URL", "https://isic-archive.s3.amazonaws.com/challenges/")

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ChallengeSplit:
    challenge: str        # isic2016 | isic2017 | isic2018
    split: str            # train | val | test
    year: str             # folder under the challenge base URL
    inputs_zip: str       # the images
    truth_zip: str        # the lesion masks
    n_images: int         # as published
    mask_suffix: str      # "_segmentation" (2016: "_Segmentation")

    @property
    def mask_pattern(self) -> re.Pattern:
        """Names of mask entries inside the ground-truth zip (any folder prefix)."""
        return re.compile(rf"(?:[^/]+/)*(ISIC_[0-9]{{7}}){self.mask_suffix}\.png")

    @property
    def image_pattern(self) -> re.Pattern:
        """Names of image entries inside the inputs zip (superpixel files and the like do not match)."""
        return re.compile(r"(?:[^/]+/)*(ISIC_[0-9]{7})\.(jpg|jpeg|png)", re.IGNORECASE)

    def url(self, base_url: str, which: str) -> str:
        name = self.truth_zip if which == "truth" else self.inputs_zip
        return f"{base_url.rstrip('/')}/{self.year}/{name}"


def _splits_2016() -> list[ChallengeSplit]:
    names = {"train": "Training", "test": "Test"}
    counts = {"train": 900, "test": 379}
    return [
        ChallengeSplit("isic2016", split, "2016", f"ISBI2016_ISIC_Part1_{name}_Data.zip",
                       f"ISBI2016_ISIC_Part1_{name}_GroundTruth.zip", counts[split], "_Segmentation")
        for split, name in names.items()
    ]


def _splits_2017() -> list[ChallengeSplit]:
    names = {"train": "Training", "val": "Validation", "test": "Test_v2"}
    counts = {"train": 2000, "val": 150, "test": 600}
    return [
        ChallengeSplit("isic2017", split, "2017", f"ISIC-2017_{name}_Data.zip",
                       f"ISIC-2017_{name}_Part1_GroundTruth.zip", counts[split], "_segmentation")
        for split, name in names.items()
    ]


def _splits_2018() -> list[ChallengeSplit]:
    names = {"train": "Training", "val": "Validation", "test": "Test"}
    counts = {"train": 2594, "val": 100, "test": 1000}
    return [
        ChallengeSplit("isic2018", split, "2018", f"ISIC2018_Task1-2_{name}_Input.zip",
                       f"ISIC2018_Task1_{name}_GroundTruth.zip", counts[split], "_segmentation")
        for split, name in names.items()
    ]


CATALOG: dict[str, dict[str, ChallengeSplit]] = {
    c: {s.split: s for s in splits}
    for c, splits in (("isic2016", _splits_2016()), ("isic2017", _splits_2017()), ("isic2018", _splits_2018()))
}


def get_split(challenge: str, split: str) -> ChallengeSplit:
    """Look up one split; the error lists what exists."""
    if challenge not in CATALOG:
        raise ValueError(f"unknown challenge {challenge!r}; choose one of {', '.join(CATALOG)}")
    if split not in CATALOG[challenge]:
        raise ValueError(
            f"{challenge} has no {split!r} split; it has {', '.join(CATALOG[challenge])}"
        )
    return CATALOG[challenge][split]
