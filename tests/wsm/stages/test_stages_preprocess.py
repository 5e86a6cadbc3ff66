"""Stage 1: decoding (wsm.io.images, on real files written here) and preprocess (on synthetic and real arrays)."""
from __future__ import annotations

import pickle
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageFile
from synthetic import ISIC2018, SKIN, jaccard, synthetic_dermoscopy

from wsm.io import images
from wsm.io.images import ImageDecodeError, encode_label_png, image_size, read_image, read_mask, write_label_png
from wsm.stages.preprocess import (PreprocessConfig, Preprocessed, preprocess, remove_hair, shades_of_grey,
                                   to_working_size, vignette_mask)
from paths import SHARED_DATA

cv2.setNumThreads(1)

SHARED = SHARED_DATA
FULLRES = SHARED / "isic2017-fullres-sample"


# ------------------------------------------------------------------------------------------------------ imageio


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_1bit_png(path: Path, width: int, height: int) -> None:
    """A valid all-black 1-bit PNG of any size: a few kilobytes for hundreds of megapixels (a decompression bomb)."""
    row = b"\x00" * (1 + (width + 7) // 8)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    chunks = _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunks)


@pytest.fixture()
def no_decoding(monkeypatch):
    """Fail the test if any pixel data is decoded."""

    def refuse(self, *a, **k):
        raise AssertionError("pixel data was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


def test_read_image_rgb_jpeg_roundtrip(tmp_path):
    rgb, _, _ = synthetic_dermoscopy(64, 80)
    Image.fromarray(rgb).save(tmp_path / "a.jpg", quality=95)
    out = read_image(tmp_path / "a.jpg")
    assert out.shape == (64, 80, 3) and out.dtype == np.uint8
    assert out.flags.c_contiguous and out.flags.writeable
    assert np.abs(out.astype(int) - rgb).mean() < 6
    assert image_size(tmp_path / "a.jpg") == (80, 64)


def test_read_image_cmyk_jpeg(tmp_path):
    Image.new("CMYK", (16, 8), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=95)
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    out = read_image(tmp_path / "cmyk.jpg")
    assert out.shape == (8, 16, 3)
    assert np.abs(out.reshape(-1, 3).mean(0) - (255, 0, 0)).max() < 12  # red, not inverted


def test_read_image_16bit_png_is_scaled_not_clipped(tmp_path):
    arr = np.array([[0, 257 * 100, 65535, 1000]], dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    out = read_image(tmp_path / "g16.png")
    assert out.shape == (1, 4, 3)
    assert out[0, :, 0].tolist() == [0, 100, 255, 4]
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_read_image_32bit_int_and_float_tiff(tmp_path):
    Image.fromarray(np.array([[0, 65535]], dtype=np.int32)).save(tmp_path / "i.tif")
    assert read_image(tmp_path / "i.tif")[0, :, 0].tolist() == [0, 255]
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32)).save(tmp_path / "f.tif")
    assert Image.open(tmp_path / "f.tif").mode == "F"
    assert read_image(tmp_path / "f.tif")[0, :, 0].tolist() == [0, 128, 255]


def test_read_image_grayscale_palette_and_bilevel(tmp_path):
    Image.fromarray(np.array([[0, 90, 255]], dtype=np.uint8)).save(tmp_path / "l.png")
    out = read_image(tmp_path / "l.png")
    assert out.shape == (1, 3, 3) and out[0, :, 0].tolist() == [0, 90, 255] and (out[..., 2] == out[..., 0]).all()

    pal = Image.new("P", (2, 1))
    pal.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    pal.putpixel((1, 0), 1)
    pal.save(tmp_path / "p.png")
    assert read_image(tmp_path / "p.png").tolist() == [[[10, 20, 30], [200, 100, 50]]]

    Image.new("1", (3, 2), 1).save(tmp_path / "b.png")
    assert (read_image(tmp_path / "b.png") == 255).all()


def test_read_image_alpha_is_composited_on_white(tmp_path):
    rgba = np.array([[[200, 0, 0, 255], [0, 0, 0, 0], [0, 0, 0, 128]]], dtype=np.uint8)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    out = read_image(tmp_path / "rgba.png")
    assert out[0, 0].tolist() == [200, 0, 0]
    assert out[0, 1].tolist() == [255, 255, 255]
    assert np.abs(out[0, 2].astype(int) - 127).max() <= 1
    Image.fromarray(np.array([[[50, 0]]], dtype=np.uint8), mode="LA").save(tmp_path / "la.png")
    assert read_image(tmp_path / "la.png").tolist() == [[[255, 255, 255]]]
    pal = Image.new("P", (2, 1))
    pal.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    pal.putpixel((1, 0), 1)
    pal.info["transparency"] = 0
    pal.save(tmp_path / "pt.png", transparency=0)
    assert read_image(tmp_path / "pt.png").tolist() == [[[255, 255, 255], [200, 100, 50]]]


def test_exif_orientation_6_rotates_and_swaps_size(tmp_path):
    arr = np.zeros((20, 40, 3), np.uint8)  # stored 40 wide, 20 high; left half red, right half blue
    arr[:, :20] = (255, 0, 0)
    arr[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    Image.fromarray(arr).save(tmp_path / "rot.jpg", exif=exif, quality=95)
    assert image_size(tmp_path / "rot.jpg") == (20, 40)
    out = read_image(tmp_path / "rot.jpg")
    assert out.shape == (40, 20, 3)
    assert out[5, 10, 0] > 200 and out[5, 10, 2] < 60  # the stored left (red) is now on top
    assert out[35, 10, 2] > 200 and out[35, 10, 0] < 60


def test_truncated_jpeg_raises_and_global_flag_untouched(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "full.jpg", quality=90)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError) as err:
        read_image(tmp_path / "cut.jpg")
    assert "truncated" in err.value.reason
    assert str(tmp_path / "cut.jpg") in str(err.value) and "good copy" in str(err.value)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_empty_and_non_image_files_raise(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageDecodeError, match="empty"):
        read_image(tmp_path / "empty.jpg")
    (tmp_path / "notes.jpg").write_text("this is not a JPEG, it is a text file\n")
    with pytest.raises(ImageDecodeError, match="not an image format"):
        read_image(tmp_path / "notes.jpg")
    with pytest.raises(ImageDecodeError):
        read_mask(tmp_path / "notes.jpg")
    with pytest.raises(ImageDecodeError):
        image_size(tmp_path / "empty.jpg")
    with pytest.raises(FileNotFoundError):
        read_image(tmp_path / "missing.jpg")


def test_decompression_bomb_refused_without_decoding(tmp_path, no_decoding):
    write_1bit_png(tmp_path / "bomb.png", 20000, 20000)  # 400 megapixels
    assert (tmp_path / "bomb.png").stat().st_size < 200_000
    with pytest.raises(ImageDecodeError, match="decompression bomb"):
        read_image(tmp_path / "bomb.png")
    # between our 120 MP cap and Pillow's own limit (2 x 89 MP): our cap refuses it
    write_1bit_png(tmp_path / "big.png", 12000, 12000)
    with pytest.raises(ImageDecodeError, match="above the cap of 120.0 megapixels"):
        read_image(tmp_path / "big.png")


def test_pixel_cap_is_configurable(tmp_path):
    Image.new("RGB", (100, 100), (1, 2, 3)).save(tmp_path / "small.png")
    with pytest.raises(ImageDecodeError, match="max_pixels"):
        read_image(tmp_path / "small.png", max_pixels=5000)
    assert read_image(tmp_path / "small.png", max_pixels=10_000).shape == (100, 100, 3)


def test_jpeg_draft_decoding_keeps_min_side(tmp_path):
    Image.new("RGB", (1024, 768), SKIN).save(tmp_path / "big.jpg")
    out = read_image(tmp_path / "big.jpg", min_side=200)
    assert 200 <= min(out.shape[:2]) < 768
    assert out.shape[1] / out.shape[0] == pytest.approx(1024 / 768, rel=0.01)


def test_decode_error_is_picklable_and_says_what_to_do():
    err = ImageDecodeError("/x/ISIC_0000001.jpg", "the file is empty (0 bytes)")
    again = pickle.loads(pickle.dumps(err))
    assert again.path == Path("/x/ISIC_0000001.jpg") and again.reason == err.reason and str(again) == str(err)


def test_read_mask_modes(tmp_path):
    grey = np.array([[0, 255, 200]], dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "m.png")
    out = read_mask(tmp_path / "m.png")
    assert out.dtype == np.uint8 and out.shape == (1, 3) and out.tolist() == [[0, 255, 200]]
    rgb = np.array([[[0, 0, 0], [255, 0, 0], [255, 255, 255], [90, 90, 90]]], dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    assert read_mask(tmp_path / "rgb.png").tolist() == [[0, 255, 255, 90]]  # brightest channel: red is lesion
    Image.new("1", (2, 2), 1).save(tmp_path / "b.png")
    assert read_mask(tmp_path / "b.png").tolist() == [[255, 255], [255, 255]]
    Image.fromarray(np.array([[0, 65535]], dtype=np.uint16)).save(tmp_path / "m16.png")
    assert read_mask(tmp_path / "m16.png").tolist() == [[0, 255]]


def test_write_label_png_is_atomic_deterministic_and_8bit(tmp_path):
    label_map = np.zeros((37, 53), np.uint8)
    label_map[5:20, 10:30] = 1
    label_map[20:25] = 255
    write_label_png(tmp_path / "out" / "ISIC_0000001.png", label_map)
    first = (tmp_path / "out" / "ISIC_0000001.png").read_bytes()
    write_label_png(tmp_path / "out" / "ISIC_0000001.png", label_map.copy())
    assert (tmp_path / "out" / "ISIC_0000001.png").read_bytes() == first == encode_label_png(label_map)
    write_label_png(tmp_path / "other.png", label_map)
    assert (tmp_path / "other.png").read_bytes() == first
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["ISIC_0000001.png"]  # no temp files left
    with Image.open(tmp_path / "other.png") as im:
        assert im.mode == "L" and im.size == (53, 37)
        assert not any(k in im.info for k in ("tIME", "date", "Software"))
    assert (read_mask(tmp_path / "other.png") == label_map).all()


def test_write_label_png_refuses_wrong_arrays(tmp_path):
    for bad in (np.zeros((4, 4), bool), np.zeros((4, 4), np.int64), np.zeros((4, 4, 3), np.uint8)):
        with pytest.raises(ValueError, match="2-D uint8"):
            write_label_png(tmp_path / "x.png", bad)
    assert not (tmp_path / "x.png").exists()
    assert list(tmp_path.iterdir()) == []


def test_imageio_public_names():
    assert set(images.__all__) >= {"read_image", "read_mask", "write_label_png", "image_size", "ImageDecodeError"}


# --------------------------------------------------------------------------------------------------- preprocess


def test_to_working_size_square_and_dtype():
    rgb, _, _ = synthetic_dermoscopy(90, 120)
    out = to_working_size(rgb, 64)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    up = to_working_size(rgb, 200)
    assert up.shape == (200, 200, 3)
    same = to_working_size(out, 64)
    assert (same == out).all() and same is not out
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        to_working_size(rgb[..., 0], 64)
    with pytest.raises(ValueError, match="uint8"):
        to_working_size(rgb.astype(np.float32), 64)


def test_vignette_mask_finds_frame_not_lesion():
    rgb, disc, frame = synthetic_dermoscopy(128, 128)
    found = vignette_mask(rgb)
    assert found.dtype == bool and found.shape == (128, 128)
    assert jaccard(found, frame) > 0.7  # the mask is widened inwards by the margin, on purpose
    assert found[frame].mean() > 0.98
    assert not (found & disc).any()


def test_vignette_mask_corner_pieces_of_a_cropped_frame():
    rgb, disc, frame = synthetic_dermoscopy(160, 160, frame_r=0.58)  # 4 separate dark corners
    n_pieces = cv2.connectedComponents(frame.astype(np.uint8))[0] - 1
    assert n_pieces == 4
    found = vignette_mask(rgb)
    assert found[frame].mean() > 0.98 and not (found & disc).any()


def test_vignette_mask_leaves_dark_lesion_touching_border_alone():
    h = w = 128
    img = np.full((h, w, 3), SKIN, np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    lesion = np.hypot(xx - 10, yy - 64) < 40  # a very dark lesion cut by the left border
    img[lesion] = (20, 12, 10)
    assert not vignette_mask(img).any()
    assert not vignette_mask(np.full((h, w, 3), SKIN, np.uint8)).any()


def test_vignette_mask_frame_with_lesion_touching_it():
    rgb, disc, frame = synthetic_dermoscopy(128, 128)
    yy, xx = np.mgrid[0:128, 0:128]
    lesion = np.hypot(xx - 64, yy - 10) < 22  # a black lesion reaching into the frame at the top
    rgb[lesion & ~frame] = (15, 10, 10)
    found = vignette_mask(rgb)
    assert found[frame].mean() > 0.98
    assert found[lesion & ~frame].mean() < 0.5


def test_vignette_mask_letterbox_bars():
    img = np.full((100, 120, 3), SKIN, np.uint8)
    img[1:12] = 2  # a bright first row, then a black bar (as in ISIC_0000210)
    img[-10:] = 0
    found = vignette_mask(img)
    assert found[1:12].all() and found[-10:].all()
    assert not found[30:70].any()


def test_remove_hair_paints_over_thin_dark_lines():
    rgb, disc, _ = synthetic_dermoscopy(128, 128, frame_r=0)
    hairy = rgb.copy()
    for y in (20, 45, 100):
        cv2.line(hairy, (0, y), (127, y + 15), (25, 20, 15), 1)
    hair = np.any(hairy != rgb, axis=2) & ~disc
    clean = remove_hair(hairy)
    assert clean.shape == hairy.shape and clean.dtype == np.uint8
    err_before = np.abs(hairy.astype(int) - rgb)[hair].mean()
    err_after = np.abs(clean.astype(int) - rgb)[hair].mean()
    assert err_after < 0.3 * err_before
    assert clean[disc].mean() < 100  # the lesion survives


def test_shades_of_grey_removes_a_colour_cast():
    rgb, _, frame = synthetic_dermoscopy(96, 96)
    cast = np.clip(rgb * np.array([0.8, 1.0, 1.3]), 0, 255).astype(np.uint8)
    out = shades_of_grey(cast, 6, mask=~frame)
    assert out.shape == cast.shape and out.dtype == np.uint8
    before = cast[~frame].reshape(-1, 3).mean(0)
    after = out[~frame].reshape(-1, 3).mean(0)
    reference = rgb[~frame].reshape(-1, 3).mean(0)
    # the blue/red ratio is moved back towards the uncast image's
    target = reference[2] / reference[0]
    assert abs(after[2] / after[0] - target) < abs(before[2] / before[0] - target)
    grey = np.full((8, 8, 3), 120, np.uint8)
    assert (shades_of_grey(grey) == grey).all()
    with pytest.raises(ValueError, match="p must be"):
        shades_of_grey(grey, 0)


def test_shades_of_grey_equals_its_definition_computed_on_every_pixel():
    rgb = np.random.default_rng(3).integers(0, 256, (40, 50, 3), dtype=np.uint8)[:, ::-1]   # a non-contiguous view
    mask = np.zeros((40, 50), bool)
    mask[5:30, 10:45] = True
    for p, within in ((6, mask), (1, None)):
        pixels = (rgb.astype(np.float64) / 255.0)[within if within is not None else np.ones_like(mask)]
        illum = np.power(np.mean(np.power(pixels, p), axis=0), 1.0 / p)
        gain = 1.0 / (illum / np.linalg.norm(illum) * np.sqrt(3.0))
        expected = np.round(np.clip(rgb / 255.0 * gain * 255.0, 0, 255)).astype(np.uint8)
        assert np.array_equal(shades_of_grey(rgb, p, mask=within), expected)
    assert np.array_equal(shades_of_grey(rgb, 6, mask=np.zeros_like(mask)), rgb)   # no pixel to estimate on


def test_preprocess_contract_on_non_square_input():
    rgb, _, _ = synthetic_dermoscopy(120, 160)
    for cfg in (PreprocessConfig(working_size=96), PreprocessConfig(96, hair_removal=True, colour_constancy=True)):
        pre = preprocess(rgb, cfg)
        assert isinstance(pre, Preprocessed)
        assert pre.image.shape == (96, 96, 3) and pre.image.dtype == np.uint8
        assert pre.valid_mask.shape == (96, 96) and pre.valid_mask.dtype == bool
        assert pre.original_size == (160, 120)
        assert not pre.valid_mask[0, 0] and pre.valid_mask[48, 48]
    off = preprocess(rgb, PreprocessConfig(working_size=96, vignette=False))
    assert off.valid_mask.all()


def test_config_is_frozen():
    with pytest.raises(AttributeError):
        PreprocessConfig().working_size = 3  # type: ignore[misc]


@pytest.mark.shared
def test_real_images_frames_found_only_where_present():
    if not ISIC2018.is_dir():
        pytest.skip(f"{ISIC2018} is absent (real ISIC data for development, not shipped)")
    framed = read_image(ISIC2018 / "images" / "ISIC_0000287.jpg")  # circular dermoscope frame
    bars = read_image(ISIC2018 / "images" / "ISIC_0000210.jpg")  # black bars top and bottom
    plain = read_image(ISIC2018 / "images" / "ISIC_0000000.jpg")  # no frame
    assert 0.03 < (~preprocess(framed).valid_mask).mean() < 0.3
    assert 0.1 < (~preprocess(bars).valid_mask).mean() < 0.3
    assert preprocess(plain).valid_mask.all()
    # the official mask never puts lesion on the detected frame
    truth = read_mask(ISIC2018 / "masks" / "ISIC_0000287_segmentation.png") > 128
    assert (truth & ~preprocess(framed).valid_mask).mean() < 0.002


@pytest.mark.shared
def test_real_full_resolution_image():
    images = sorted((FULLRES / "images").glob("*.jpg")) if FULLRES.is_dir() else []
    if not images:
        pytest.skip(f"{FULLRES} is absent (real ISIC data for development, not shipped)")
    w, h = image_size(images[0])
    rgb = read_image(images[0])
    assert rgb.shape == (h, w, 3) and w * h > 2_000_000
    pre = preprocess(rgb)
    assert pre.image.shape == (512, 512, 3) and pre.original_size == (w, h)
    small = read_image(images[0], min_side=512)
    assert min(small.shape[:2]) >= 512 and small.shape[0] < h
