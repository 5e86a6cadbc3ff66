"""Image sizes, by one rule for every width and height wsm records: as displayed.

EXIF orientations 5-8 rotate the stored pixels by 90 or 270 degrees, so the displayed width and height are the
stored ones swapped. wsm decodes images in display orientation (``wsm.imageio.read_image``) and writes label maps
at that size, so the DATA manifest, the mask checks and the WSM manifest all use it too.
"""
from __future__ import annotations

from pathlib import Path

from PIL import Image

EXIF_ORIENTATION_TAG = 0x0112
SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})


def displayed_size(im: Image.Image) -> tuple[int, int]:
    """``(width, height)`` of an opened image as displayed; a corrupt EXIF block counts as no rotation (decoding
    reports it)."""
    width, height = im.size
    try:
        orientation = im.getexif().get(EXIF_ORIENTATION_TAG, 1)
    except Exception:  # Pillow raises various types on malformed EXIF
        orientation = 1
    return (height, width) if orientation in SWAPPING_ORIENTATIONS else (width, height)


def image_size(path: Path | str) -> tuple[int, int]:
    """``(width, height)`` as displayed, from the file's header (Pillow's errors propagate)."""
    with Image.open(path) as im:
        return displayed_size(im)


def check_decodes(im: Image.Image) -> None:
    """Decode an opened image all through, so that a truncated or corrupt file fails here (Pillow's OSError)
    rather than later; a JPEG is decoded at 1/8 scale, which still reads every byte of its scan (~2 ms for a
    512 px image, ~40 ms for 12 megapixels)."""
    if im.format == "JPEG":
        im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
    im.load()


def decoded_size(path: Path | str) -> tuple[int, int]:
    """``(width, height)`` as displayed, after decoding the whole file (check_decodes; Pillow's errors
    propagate), so that a size is only given for an image that is intact."""
    with Image.open(path) as im:
        size = displayed_size(im)      # before check_decodes: a JPEG draft shrinks im.size
        check_decodes(im)
        return size
