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


# As published, one split a line: challenge, split, inputs zip, ground-truth zip, images, mask name suffix.
_PUBLISHED = """
isic2016 train ISBI2016_ISIC_Part1_Training_Data.zip    ISBI2016_ISIC_Part1_Training_GroundTruth.zip   900 _Segmentation
isic2016 test  ISBI2016_ISIC_Part1_Test_Data.zip        ISBI2016_ISIC_Part1_Test_GroundTruth.zip       379 _Segmentation
isic2017 train ISIC-2017_Training_Data.zip              ISIC-2017_Training_Part1_GroundTruth.zip      2000 _segmentation
isic2017 val   ISIC-2017_Validation_Data.zip            ISIC-2017_Validation_Part1_GroundTruth.zip     150 _segmentation
isic2017 test  ISIC-2017_Test_v2_Data.zip               ISIC-2017_Test_v2_Part1_GroundTruth.zip        600 _segmentation
isic2018 train ISIC2018_Task1-2_Training_Input.zip      ISIC2018_Task1_Training_GroundTruth.zip       2594 _segmentation
isic2018 val   ISIC2018_Task1-2_Validation_Input.zip    ISIC2018_Task1_Validation_GroundTruth.zip      100 _segmentation
isic2018 test  ISIC2018_Task1-2_Test_Input.zip          ISIC2018_Task1_Test_GroundTruth.zip           1000 _segmentation
"""


def _catalog(table: str) -> dict[str, dict[str, ChallengeSplit]]:
    catalog: dict[str, dict[str, ChallengeSplit]] = {}
    for line in table.strip().splitlines():
        challenge, split, inputs, truth, n_images, suffix = line.split()
        catalog.setdefault(challenge, {})[split] = ChallengeSplit(
            challenge, split, challenge.removeprefix("isic"), inputs, truth, int(n_images), suffix)
    return catalog


CATALOG = _catalog(_PUBLISHED)


def get_split(challenge: str, split: str) -> ChallengeSplit:
    """Look up one split; the error lists what exists."""
    if challenge not in CATALOG:
        raise ValueError(f"unknown challenge {challenge!r}; choose one of {', '.join(CATALOG)}")
    if split not in CATALOG[challenge]:
        raise ValueError(
            f"{challenge} has no {split!r} split; it has {', '.join(CATALOG[challenge])}"
        )
    return CATALOG[challenge][split]
