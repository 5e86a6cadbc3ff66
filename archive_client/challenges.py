"""The official challenge datasets that carry masks (the archive API serves none): lesion masks of every
challenge, and the dermoscopic-attribute masks of ISIC 2018 Task 2.

What was known when this was written (ISIC 2016-2018 challenge pages and the S3 listing):
zips live under https://isic-archive.s3.amazonaws.com/challenges/<year>/; image counts per split are
2016 900/-/379, 2017 2000/150/600, 2018 2594/100/1000. Each ground-truth zip holds one folder named like
the zip, with ISIC_ddddddd_segmentation.png masks (2016: _Segmentation), 8-bit, 0 background, 255 lesion,
the same size as the image. The base URL is configurable (`--challenge-url`, env WSM_CHALLENGE_URL).

ISIC 2018 Task 2 (task "attributes"): one ISIC_ddddddd_attribute_<name>.png per image and attribute (the five
of ATTRIBUTES; a pixel may be in several), 8-bit, 0 / 255, the image's size; its images are Task 1's
(ISIC2018_Task1-2_*_Input.zip). Only the training ground truth was re-released, as
ISIC2018_Task2_Training_GroundTruth_v3.zip; the validation zip is ISIC2018_Task2_Validation_GroundTruth.zip
(no _v3) and a test one, ISIC2018_Task2_Test_GroundTruth.zip (1000 images), was published too: that is how
independent download scripts name them under both challenges/2018/ of this bucket and the isic-challenge-data
bucket's 2018/; the challenge page itself was not at hand to confirm the sizes.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

DEFAULT_CHALLENGE_URL = os.environ.get("WSM_CHALLENGE_URL", "https://isic-archive.s3.amazonaws.com/challenges/")

SPLITS = ("train", "val", "test")
TASKS = ("lesion", "attributes")    # Task 1 lesion masks (every challenge), Task 2 attribute masks (ISIC 2018)
ATTRIBUTES = ("globules", "milia_like_cyst", "negative_network", "pigment_network", "streaks")
# An attribute mask's file name, in the zips, in import folders and in DATA/attributes/<challenge>/.
ATTRIBUTE_FILE = re.compile(r"(ISIC_[0-9]{7})_attribute_([A-Za-z0-9_]+)\.png")


@dataclass(frozen=True)
class ChallengeSplit:
    challenge: str        # isic2016 | isic2017 | isic2018
    split: str            # train | val | test
    year: str             # folder under the challenge base URL
    inputs_zip: str       # the images
    truth_zip: str        # the lesion masks
    n_images: int         # as published
    mask_suffix: str      # "_segmentation" (2016: "_Segmentation"); "_attribute" for Task 2
    task: str = "lesion"  # lesion | attributes (see TASKS)

    @property
    def mask_pattern(self) -> re.Pattern:
        """Names of mask entries inside the ground-truth zip (any folder prefix); group 1 is the isic_id, and for
        attribute masks group 2 the attribute's name (any name: the caller checks it against ATTRIBUTES)."""
        if self.task == "attributes":
            return re.compile(rf"(?:[^/]+/)*{ATTRIBUTE_FILE.pattern}")
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

# The same for the attribute masks (task "attributes"): only ISIC 2018 Task 2 has them.
_PUBLISHED_ATTRIBUTES = """
isic2018 train ISIC2018_Task1-2_Training_Input.zip      ISIC2018_Task2_Training_GroundTruth_v3.zip    2594 _attribute
isic2018 val   ISIC2018_Task1-2_Validation_Input.zip    ISIC2018_Task2_Validation_GroundTruth.zip      100 _attribute
isic2018 test  ISIC2018_Task1-2_Test_Input.zip          ISIC2018_Task2_Test_GroundTruth.zip           1000 _attribute
"""


def _catalog(table: str, task: str) -> dict[str, dict[str, ChallengeSplit]]:
    catalog: dict[str, dict[str, ChallengeSplit]] = {}
    for line in table.strip().splitlines():
        challenge, split, inputs, truth, n_images, suffix = line.split()
        catalog.setdefault(challenge, {})[split] = ChallengeSplit(
            challenge, split, challenge.removeprefix("isic"), inputs, truth, int(n_images), suffix, task)
    return catalog


CATALOG = _catalog(_PUBLISHED, "lesion")
ATTRIBUTE_CATALOG = _catalog(_PUBLISHED_ATTRIBUTES, "attributes")
CATALOGS = {"lesion": CATALOG, "attributes": ATTRIBUTE_CATALOG}


def task_catalog(challenge: str, task: str = "lesion") -> dict[str, ChallengeSplit]:
    """The published splits of ``challenge`` for ``task``; a ValueError that lists what exists otherwise."""
    if task not in CATALOGS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    catalog = CATALOGS[task]
    if challenge in catalog:
        return catalog[challenge]
    if task == "attributes" and challenge in CATALOG:
        raise ValueError(f"{challenge} has no attribute masks: only {', '.join(catalog)} (ISIC 2018 Task 2) has "
                         f"them; use --task lesion for {challenge}'s lesion masks")
    raise ValueError(f"unknown challenge {challenge!r}; choose one of {', '.join(catalog)}")


def get_split(challenge: str, split: str, task: str = "lesion") -> ChallengeSplit:
    """Look up one split of ``task`` (lesion or attributes); the error lists what exists."""
    splits = task_catalog(challenge, task)
    if split not in splits:
        raise ValueError(f"{challenge} has no {split!r} split; it has {', '.join(splits)}")
    return splits[split]


def check_attribute(name: str) -> str:
    """``name`` if it is one of the five ISIC 2018 attributes; a ValueError listing them otherwise."""
    if name not in ATTRIBUTES:
        raise ValueError(f"unknown attribute {name!r}; the ISIC 2018 Task 2 attributes are {', '.join(ATTRIBUTES)}")
    return name


def attribute_file_name(isic_id: str, attribute: str) -> str:
    """ISIC_x_attribute_<attribute>.png, as the Task 2 zips name the files."""
    return f"{isic_id}_attribute_{check_attribute(attribute)}.png"
