"""Decoding and writing images: the only module in wsm that reads or writes pixels on disk.

Every stage works on arrays; this module turns files into them and back:

- :func:`read_image`: any image Pillow can open -> ``uint8`` ``(H, W, 3)`` RGB in display orientation.
- :func:`read_mask`: a lesion mask -> ``uint8`` ``(H, W)`` (not binarised; scorers binarise at > 128).
- :func:`read_official_mask`: an official mask, 0/255 or 0/1 as stored -> ``uint8`` 0/255; other values refused.
- :func:`read_label_map`: an ISIC_WSM label map -> ``uint8`` 0/1/255 as stored; other values refused.
- :func:`read_lesion_map`: a map of either convention (ISIC_WSM, or a challenge-style 0/255 mask) -> 0/1/255,
  optionally checked against its image's size: what `wsm report` scores and `wsm train` learns from;
  :func:`read_class_map`: a class-index map (0..K-1, 255) as stored.
- :func:`image_size` / :func:`decoded_size`: ``(width, height)`` as displayed, from the header only / after a
  full decode (:func:`check_decodes`).
- :func:`encode_label_png` / :func:`write_label_png`: an ISIC_WSM label map as a deterministic 8-bit PNG.

Sizes follow one rule for every width and height wsm records: as displayed. EXIF orientations 5-8 rotate the
stored pixels by 90 or 270 degrees, so the displayed width and height are the stored ones swapped; images are
decoded in display orientation and label maps written at that size, so the DATA manifest, the mask checks and the
WSM manifest all use it.

Decompression bombs are refused with our own pixel cap before any pixel is decoded. Pillow's global
``ImageFile.LOAD_TRUNCATED_IMAGES`` is never touched: a truncated file is an error, not a grey half image.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from wsm.errors import WsmError
from wsm.io.atomic import atomic_path

__all__ = [
    "CHALLENGE",
    "DEFAULT_MAX_PIXELS",
    "ISIC_WSM",
    "LABEL_PNG_COMPRESS_LEVEL",
    "ImageDecodeError",
    "MapSizeError",
    "UNDECODABLE",
    "check_map_size",
    "check_decodes",
    "decode_problem",
    "decoded_size",
    "displayed_size",
    "encode_label_png",
    "image_size",
    "official_mask",
    "png_is_complete",
    "read_image",
    "read_class_map",
    "read_label_map",
    "read_lesion_map",
    "read_mask",
    "read_official_mask",
    "write_label_png",
]

# The largest ISIC archive images are 6748 x 4439 (about 30 megapixels); 120 MP leaves a 4x margin and stays far
# below what a 1-bit PNG or a JPEG header can claim (a 20000 x 20000 bomb is 400 MP in a few kilobytes).
DEFAULT_MAX_PIXELS = 120_000_000
# zlib level for label maps: fixed, so that the same array always gives the same bytes.
LABEL_PNG_COMPRESS_LEVEL = 6

_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_LABEL_VALUES = (0, 1, 255)  # ISIC_WSM: background, lesion, uncertain
ISIC_WSM, CHALLENGE = "ISIC_WSM", "challenge"          # the two conventions a map file can follow


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


def check_decodes(im: Image.Image) -> None:
    """Decode an opened image all through, so that a truncated or corrupt file fails here (Pillow's OSError)
    rather than later; a JPEG is decoded at 1/8 scale, which still reads every byte of its scan (~2 ms for a
    512 px image, ~40 ms for 12 megapixels)."""
    if im.format == "JPEG":
        im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
    im.load()


def decoded_size(path: Path | str) -> tuple[int, int]:
    """``(width, height)`` as displayed, after decoding the whole file (:func:`check_decodes`), so that a size is
    only given for an image that is intact; a file that does not decode raises one of :data:`UNDECODABLE`."""
    with _open(Path(path), None) as im:
        size = displayed_size(im)      # before check_decodes: a JPEG draft shrinks im.size
        check_decodes(im)
        return size


class ImageDecodeError(WsmError):
    """An image or mask file that cannot be turned into pixels (empty, truncated, corrupt, too large, odd mode).

    ``path`` and ``reason`` say what was received and what was wrong; the message also says how to fix it.
    """

    def __init__(self, path: Path | str, reason: str, fix: str | None = None) -> None:
        self.path = Path(path)
        self.reason = reason
        self.fix = fix or (
            "Replace the file with a good copy (for DATA images: rerun `wsm download`, which verifies sizes and "
            "resumes), or leave it out."
        )
        super().__init__(f"cannot decode {self.path}: {reason}. {self.fix}")

    def __reduce__(self):  # keep the three arguments when the error crosses a worker-process boundary
        return (type(self), (self.path, self.reason, self.fix))


# What reading a damaged file can raise: our own error, or Pillow's when it decodes past a sound header.
UNDECODABLE = (ImageDecodeError, OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def decode_problem(err: BaseException) -> str:
    """What was wrong with a file, without the advice (callers give their own)."""
    return err.reason if isinstance(err, ImageDecodeError) else f"{type(err).__name__}: {err}"


def _open(path: Path, max_pixels: int | None) -> Image.Image:
    """Open lazily (header only), refusing empty files and images above ``max_pixels`` before decoding."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:  # a missing file is the caller's mistake, not a broken image
        raise
    except OSError as exc:
        raise ImageDecodeError(path, f"the file cannot be read ({exc})") from exc
    if size == 0:
        raise ImageDecodeError(path, "the file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Our own cap below is the policy; Pillow's warning above its 89 MP default would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(
            path,
            f"Pillow refused it as a decompression bomb ({exc})",
            "If the image is genuine, raise PIL.Image.MAX_IMAGE_PIXELS as well as max_pixels.",
        ) from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(
            path, f"not an image format Pillow recognises (first bytes {_head(path)!r})"
        ) from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageDecodeError(path, f"the header is corrupt ({type(exc).__name__}: {exc})") from exc
    width, height = im.size
    if width <= 0 or height <= 0:
        im.close()
        raise ImageDecodeError(path, f"the header claims an empty image ({width}x{height})")
    if max_pixels is not None and width * height > max_pixels:
        im.close()
        raise ImageDecodeError(
            path,
            f"{width}x{height} = {width * height / 1e6:.1f} megapixels is above the cap of "
            f"{max_pixels / 1e6:.1f} megapixels (a decompression bomb, or a file that is not a skin image)",
            "If the image is genuine, pass a larger max_pixels (the largest ISIC archive images are about 30 MP).",
        )
    return im


def _head(path: Path, n: int = 16) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(n)
    except OSError:
        return b""


def _load(im: Image.Image, path: Path) -> Image.Image:
    """Decode the pixels and apply the EXIF orientation; every decoding failure becomes ImageDecodeError."""
    try:
        im.load()
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        reason = str(exc)
        if "truncated" in reason or isinstance(exc, EOFError):
            reason = f"the file is truncated ({reason})"
        else:
            reason = f"the pixel data is corrupt ({type(exc).__name__}: {reason})"
        raise ImageDecodeError(path, reason) from exc
    try:
        return ImageOps.exif_transpose(im)
    except Exception as exc:  # a malformed EXIF block; Pillow raises various types here
        raise ImageDecodeError(
            path,
            f"the EXIF orientation block is corrupt ({type(exc).__name__}: {exc})",
            "Strip the EXIF data (e.g. exiftool -Orientation= FILE) after checking how the image should be shown.",
        ) from exc


def _wide_to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """Scale a single-channel 16-bit, 32-bit integer or float raster to 0..255 by its mode (scaled, never clipped).

    - ``I;16*`` (16-bit PNG/TIFF), and ``I`` whose values lie within 0..65535: ``round(v / 257)``, so that
      65535 -> 255, 257 -> 1 and 0 -> 0 exactly (clipping at 255 would turn almost every pixel white).
    - ``F`` within 0..1: ``round(v * 255)``; ``F`` within 0..255: rounded as is.
    - anything else (negative values, wider ranges): a linear stretch of min..max onto 0..255.
    """
    arr = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if mode in _SIXTEEN_BIT_MODES or (mode == "I" and lo >= 0 and hi <= 65535):
        out = arr / 257.0
    elif mode == "F" and lo >= 0 and hi <= 1:
        out = arr * 255.0
    elif mode == "F" and lo >= 0 and hi <= 255:
        out = arr
    elif hi > lo:
        out = (arr - lo) * (255.0 / (hi - lo))
    else:
        out = np.zeros_like(arr)
    return np.round(out).astype(np.uint8)


def _to_rgb(im: Image.Image, path: Path) -> np.ndarray:
    """Any Pillow mode -> contiguous uint8 (H, W, 3).

    Transparent pixels are composited on white: dermoscopic and clinical photographs have no transparency, so an
    alpha channel means "no picture here", and white is the one fill that every lesion cue (darkness, colour,
    contrast) reads as background. Black would look like pigment and like the dermoscope frame.
    """
    mode = im.mode
    if mode == "P" and "transparency" in im.info:
        im, mode = im.convert("RGBA"), "RGBA"
    if mode in _ALPHA_MODES:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.array(Image.alpha_composite(white, rgba).convert("RGB"))
    if mode in _SIXTEEN_BIT_MODES or mode in {"I", "F"}:
        grey = _wide_to_uint8(np.asarray(im), mode)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode != "RGB":
        try:
            im = im.convert("RGB")  # L, 1, P, CMYK (Adobe inversion handled by Pillow), YCbCr, LAB, HSV, ...
        except (ValueError, OSError) as exc:
            raise ImageDecodeError(
                path,
                f"Pillow cannot convert mode {mode!r} to RGB ({exc})",
                "Convert the file to an 8-bit RGB JPEG or PNG first.",
            ) from exc
    arr = np.array(im)  # a copy: writable and C-contiguous (np.asarray of a Pillow image is read-only)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ImageDecodeError(
            path,
            f"decoded to an array of shape {arr.shape} and dtype {arr.dtype}, expected (H, W, 3) uint8",
            "Convert the file to an 8-bit RGB JPEG or PNG first.",
        )
    return arr


def read_image(
    path: Path | str, max_pixels: int | None = DEFAULT_MAX_PIXELS, min_side: int | None = None
) -> np.ndarray:
    """Decode an image file into RGB pixels in display orientation.

    Args:
        path: any format Pillow reads (JPEG, PNG, TIFF, ...), any mode (see ``_to_rgb`` for the rules).
        max_pixels: refuse images with more pixels than this, from the header, before decoding; ``None`` keeps
            only Pillow's own limit (``PIL.Image.MAX_IMAGE_PIXELS``, which refuses above twice its value).
        min_side: when set, a JPEG may be decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling, much faster)
            as long as both sides stay at least ``min_side``; use it when the image will be resized to a
            working size anyway, and take the original size from :func:`image_size`.

    Returns:
        ``uint8`` array of shape ``(H, W, 3)``, C-contiguous and writable, EXIF orientation applied.

    Raises:
        FileNotFoundError: no such file.
        ImageDecodeError: empty, truncated, corrupt, over ``max_pixels``, or an unconvertible mode.
    """
    path = Path(path)
    with _open(path, max_pixels) as im:
        if min_side is not None and im.format == "JPEG":
            w, h = im.size
            scale = max(1, min(w, h) // max(1, int(min_side)))
            if scale >= 2:
                im.draft("RGB", (-(-w // scale), -(-h // scale)))
        loaded = _load(im, path)
        return _to_rgb(loaded, path)


def read_mask(path: Path | str, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode a lesion mask into one 8-bit channel, without binarising it.

    Rules, so that any reasonable mask file means what it shows:
    - ``L``: as stored; ``1``: 0/255; ``P``: the palette's grey level (a black/white palette gives 0/255).
    - 16-bit / 32-bit / float: scaled to 0..255 as in :func:`read_image` (65535 -> 255).
    - ``RGB``/``RGBA``/``LA``/``CMYK``: the brightest colour channel of each pixel (alpha ignored), so a grey
      mask is read exactly and a coloured mark (e.g. pure red 255,0,0) counts as lesion; luma would read pure
      red as 76, i.e. background after the official > 128 binarisation.

    Returns ``uint8`` ``(H, W)``; binarise with ``> 128`` as the official scorer does (``wsm.metrics.binarise``).
    """
    path = Path(path)
    with _open(path, max_pixels) as im:
        loaded = _load(im, path)
        mode = loaded.mode
        if mode == "L":
            arr = np.asarray(loaded)
        elif mode in {"1", "P"}:
            arr = np.asarray(loaded.convert("L"))
        elif mode in _SIXTEEN_BIT_MODES or mode in {"I", "F"}:
            arr = _wide_to_uint8(np.asarray(loaded), mode)
        else:
            try:
                rgb = np.asarray(loaded.convert("RGB"))
            except (ValueError, OSError) as exc:
                raise ImageDecodeError(
                    path, f"Pillow cannot convert mask mode {mode!r} ({exc})", "Save the mask as an 8-bit PNG."
                ) from exc
            arr = rgb.max(axis=2)
    return np.array(arr, dtype=np.uint8)  # a writable, C-contiguous copy


def _stored_values(path: Path, max_pixels: int | None) -> np.ndarray:
    """The values a single-channel PNG stores, unscaled: mode ``1`` as 0/1, ``L`` and 16-bit as they are, ``P``
    as the palette's grey levels when every colour used is grey (else as the palette indices)."""
    with _open(path, max_pixels) as im:
        loaded = _load(im, path)
        mode = loaded.mode
        if mode == "P":
            return _palette_values(loaded)
        if mode in {"1", "L", "I"} | _SIXTEEN_BIT_MODES:
            values = np.array(loaded)
            return values.astype(np.uint8) if values.dtype == bool else values
    raise ImageDecodeError(path, f"mode {mode!r} is not a single-channel mask or label map",
                           "Save it as a single-channel PNG (mode 1, L, P or 16-bit greyscale).")


def _palette_values(im: Image.Image) -> np.ndarray:
    indices = np.array(im)
    palette = np.array(im.getpalette() or [], dtype=np.uint8).reshape(-1, 3)
    used = np.unique(indices)
    if used.max() < len(palette) and (palette[used] == palette[used, :1]).all():
        return palette[indices, 0]
    return indices


def _found(values: np.ndarray) -> str:
    found = np.unique(values)
    return ", ".join(str(v) for v in found[:10]) + (" ..." if found.size > 10 else "")


def official_mask(values: np.ndarray, path: Path | str) -> np.ndarray:
    """An official mask's stored values as ``uint8`` 0/255: 0/255 as they are, 0/1 with lesion where 1.

    Raises:
        ImageDecodeError: any other values (e.g. 0/100, or 0/1/255), with the values found.
    """
    values = np.asarray(values)
    if np.isin(values, (0, 255)).all():
        return values.astype(np.uint8)
    if np.isin(values, (0, 1)).all():
        return (values * 255).astype(np.uint8)
    raise ImageDecodeError(
        path, f"an official mask holds 0/255 (or 0/1) but this one holds {_found(values)}",
        "Save it with 0 for background and 255 (or 1) for lesion.",
    )


def read_official_mask(path: Path | str, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an official (challenge) mask into ``uint8`` ``(H, W)`` 0/255, by :func:`official_mask`'s rules.

    Unlike :func:`read_mask` nothing is rescaled: a 16-bit 0/1 mask is lesion where 1, not all background.
    """
    return official_mask(_stored_values(Path(path), max_pixels), path)


def read_label_map(path: Path | str, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an ISIC_WSM label map into ``uint8`` ``(H, W)``: 0 background, 1 lesion, 255 uncertain.

    Values are read as stored (see :func:`_stored_values`), so a 1-bit map is background/lesion and a 16-bit one
    keeps 1 as lesion. Raises :class:`ImageDecodeError` for other modes or values, with the values found.
    """
    values = _stored_values(Path(path), max_pixels)
    if not np.isin(values, _LABEL_VALUES).all():
        raise ImageDecodeError(
            path, f"an ISIC_WSM label map holds 0 (background), 1 (lesion) and 255 (uncertain) but this one holds "
            f"{_found(values)}", "Write label maps with `wsm generate` or wsm.io.images.write_label_png.",
        )
    return values.astype(np.uint8)


def read_lesion_map(path: Path | str, convention: str = ISIC_WSM,
                    size: tuple[int, int] | None = None) -> np.ndarray:
    """One map as an ISIC_WSM label map (0/1/255): an ISIC_WSM file as :func:`read_label_map` reads it, a
    challenge-style 0/255 mask (:data:`CHALLENGE`) as 0/1 by :func:`official_mask`'s rules.

    ``size``: the ``(width, height)`` of the map's image; a map of another size is refused (:class:`MapSizeError`),
    never stretched. Other values than the convention's raise :class:`ImageDecodeError` with the values found.
    """
    if convention == ISIC_WSM:
        label_map = read_label_map(path)
    else:
        try:
            label_map = (read_official_mask(path) == 255).astype(np.uint8)
        except ImageDecodeError as err:
            raise ImageDecodeError(err.path, err.reason.replace("an official mask", "a challenge-style map"),
                                   "Save it with 0 for background and 255 for lesion.") from None
    return _of_size(label_map, size, path)


def read_class_map(path: Path | str, size: tuple[int, int] | None = None,
                   max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A class-index map (0..K-1, 255 unlabelled) as stored, ``uint8`` ``(H, W)``; ``size`` as for
    :func:`read_lesion_map`. Values above 255 are refused."""
    values = _stored_values(Path(path), max_pixels)
    if values.max() > 255:
        raise ImageDecodeError(path, f"a class-index map holds 0..K-1 and 255 but this one holds {_found(values)}",
                               "Save it as an 8-bit single-channel PNG of class indices.")
    return _of_size(values.astype(np.uint8), size, path)


def _of_size(label_map: np.ndarray, size: tuple[int, int] | None, path: Path | str) -> np.ndarray:
    check_map_size(path, (label_map.shape[1], label_map.shape[0]), size)
    return label_map


class MapSizeError(WsmError, ValueError):
    """A map whose width and height are not its image's."""


def check_map_size(path: Path | str, found: tuple[int, int], size: tuple[int, int] | None) -> None:
    """Refuse the map at ``path`` when its ``(width, height)`` ``found`` is not its image's ``size`` (None: not
    known): a map of another size is never stretched onto its image."""
    if size is not None and tuple(found) != tuple(size):
        raise MapSizeError(f"{path} is {found[0]}x{found[1]} but its image is {size[0]}x{size[1]} (width x height): "
                           "a map has its image's size; make it again from this image (`wsm generate`), or leave "
                           "it out")


_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"     # the IEND chunk that closes every PNG file


def png_is_complete(path: Path | str) -> bool:
    """Whether a PNG file ends with its closing IEND chunk: a file cut short can still decode to the right pixels
    (the image data precede their checksums), so decoding alone does not show it was written whole."""
    with open(path, "rb") as fh:
        fh.seek(0, 2)
        if fh.tell() < len(_PNG_END):
            return False
        fh.seek(-len(_PNG_END), 2)
        return fh.read() == _PNG_END


def image_size(path: Path | str) -> tuple[int, int]:
    """``(width, height)`` as displayed (EXIF orientations 5-8 swap them), read from the header only.

    No pixel cap applies (nothing is decoded); a file Pillow cannot identify raises :class:`ImageDecodeError`.
    """
    path = Path(path)
    with _open(path, None) as im:
        return displayed_size(im)


def encode_label_png(label_map: np.ndarray) -> bytes:
    """Encode an ``(H, W)`` ``uint8`` array as an 8-bit greyscale PNG with deterministic bytes.

    Pillow writes no time or software chunks unless asked; with a fixed zlib level the same array always gives
    the same bytes (for a given zlib build), so reruns are byte-identical and files can be compared by hash.
    """
    arr = np.asarray(label_map)
    if arr.ndim != 2 or arr.dtype != np.uint8:
        raise ValueError(
            f"a label map must be a 2-D uint8 array (H, W), got shape {arr.shape} and dtype {arr.dtype}; "
            "cast with .astype(np.uint8) after checking the values (0 background, 1 lesion, 255 uncertain)"
        )
    if arr.size == 0:
        raise ValueError(f"a label map must not be empty, got shape {arr.shape}")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(
        buf, format="PNG", compress_level=LABEL_PNG_COMPRESS_LEVEL, optimize=False
    )
    return buf.getvalue()


def write_label_png(path: Path | str, label_map: np.ndarray) -> None:
    """Write ``label_map`` as an 8-bit single-channel PNG, atomically (complete under its name, or absent)."""
    data = encode_label_png(label_map)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)

