"""Image types choose the recipe (pipeline [image_types]): no map for some, the box-prompted segmenter for clinical
photographs (wsm.stages.box_prompt, wsm.models.medsam), the cascade for whole frames (wsm.stages.cascade)."""
from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from wsm.cli import main
from wsm.config.pipeline import PipelineError, load_pipeline
from wsm.config.recipe import DEFAULT_TYPE, build_recipe, recipe_key, recipes_by_type
from wsm.demo import SAMPLE
from wsm.stages.box_prompt import lesion_box, mix
from wsm.stages.cascade import CascadeConfig

TINY = ["prior.encoder=test_resnet", "prior.size=64", "prior.epochs=1", "prior.min_steps=0", "prior.batch_size=8",
        "preprocess.working_size=96", "calibration.max_images=6", "crf.bilateral_sxy=4.0", "prior.pretrained=false"]
# the tiny test prior finds few lesions, faint and large ones: a low threshold, and crops grown 1x (still smaller
# than the image)
TINY_CASCADE = CascadeConfig(enabled=True, threshold=0.2, max_area=1.0, grow=1.0, detail_side=128)
TYPES = {0: "dermoscopic", 1: "clinical: close-up", 2: "clinical: overview", 3: ""}   # by row number mod 4 ("":
                                                                                       # import's --image-type)


def test_the_box_is_that_of_the_largest_lesion_grown_by_the_margin_and_clipped():
    prob = np.zeros((100, 100), np.float32)
    prob[10:20, 10:20] = 0.9          # small
    prob[40:70, 50:98] = 0.8          # largest, near the right edge
    valid = np.ones((100, 100), bool)
    assert lesion_box(prob, valid, 0.5, 0.0) == (50, 40, 98, 70)
    assert lesion_box(prob, valid, 0.5, 0.05) == (45, 35, 100, 75)    # grown by 5 px, clipped at 100
    assert lesion_box(prob, valid, 0.85, 0.0) == (10, 10, 20, 20)     # the other one is below the threshold
    valid[:, 50:] = False                                             # the frame hides the large one
    assert lesion_box(prob, valid, 0.5, 0.0) == (10, 10, 20, 20)
    assert lesion_box(np.zeros((8, 8)), np.ones((8, 8), bool), 0.5, 0.02) is None


def test_mix_weighs_the_box_segmenter_s_map():
    prior, boxed = np.full((2, 2), 0.2, np.float32), np.full((2, 2), 1.0, np.float32)
    assert np.allclose(mix(prior, boxed, 1.0), 1.0) and np.allclose(mix(prior, boxed, 0.0), 0.2)
    assert np.allclose(mix(prior, boxed, 0.5), 0.6)


def test_each_type_gets_its_recipe_and_skipped_types_none():
    resolved = load_pipeline("default")
    recipes = recipes_by_type(resolved)
    base = recipes[DEFAULT_TYPE]
    assert not base.box_prompt.enabled and recipes["clinical: close-up"].box_prompt.enabled
    assert recipes["clinical: close-up"].prior == base.prior        # the networks are the same for every type
    assert base.framing.max_area == 1 and recipes["clinical: close-up"].framing.max_area < 1   # a close-up frames
    assert base.cascade.enabled and not recipes["clinical: close-up"].cascade.enabled   # the box finds its scale
    assert recipe_key(base, None) == recipe_key(base, "dermoscopic") == DEFAULT_TYPE
    assert recipe_key(base, "clinical: close-up") == "clinical: close-up"
    assert recipe_key(base, "clinical: overview") is None and recipe_key(base, "RCM: mosaic") is None


@pytest.mark.parametrize("table, message", [
    ({"overrides": {"clinical: close-up": {"prior": {"size": 96}}}}, "a type may change only"),
    ({"skip": ["clinical: close-up"], "overrides": {"clinical: close-up": {"box_prompt": {"enabled": True}}}},
     "both in skip and in overrides"),
    ({"overrides": {"clinical: close-up": {"box_prompt": {"margin": 0.7}}}}, "margin"),
    ({"overrides": {"clinical: close-up": {"framing": {"max_edge_contact": 1.5}}}}, "max_edge_contact"),
])
def test_a_type_table_that_cannot_work_is_a_clear_error(table, message):
    resolved = {**load_pipeline("default"), "image_types": table}
    with pytest.raises(PipelineError, match=message):
        recipes_by_type(resolved)


def test_a_pipeline_without_image_types_maps_every_type_alike():
    resolved = {k: v for k, v in load_pipeline("default").items() if k != "image_types"}
    base = build_recipe(resolved)
    assert recipes_by_type(resolved).keys() == {DEFAULT_TYPE}
    assert recipe_key(base, "clinical: overview") == DEFAULT_TYPE


@pytest.fixture(scope="module")
def typed_data(tmp_path_factory) -> Path:
    """The embedded sample imported with an image_type per image (dermoscopic, clinical close-up and overview,
    none: the import's default for the rest)."""
    from archive_client.importer import import_folders

    root = tmp_path_factory.mktemp("typed")
    with open(SAMPLE / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    with open(root / "labels.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, [*rows[0], "image_type"])
        writer.writeheader()
        writer.writerows({**row, "image_type": TYPES[i % 4]} for i, row in enumerate(rows))
    import_folders(root / "DATA", images=SAMPLE / "images", masks=SAMPLE / "masks", labels=root / "labels.csv",
                   challenge="isic2018", split="train", progress=False, image_type="TBP tile: close-up")
    return root / "DATA"


@pytest.fixture(scope="module")
def typed_bundle(typed_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundle")
    assert main(["-q", "fit", "--data", str(typed_data), "--out", str(out),
                 *[a for v in TINY for a in ("--set", v)]]) == 0
    return out


def _generate(data: Path, bundle: Path, out: Path, *args: str) -> dict[str, dict]:
    assert main(["-q", "generate", "--workers", "0", "--batch-size", "8", "--data", str(data), "--bundle",
                 str(bundle), "--out", str(out), "--limit", "12", *args]) == 0
    return {r["isic_id"]: r for r in pq.read_table(out / "manifest.parquet").to_pylist()}


def test_generate_routes_each_image_by_its_type(typed_data, typed_bundle, tmp_path, capsys):
    rows = _generate(typed_data, typed_bundle, tmp_path / "wsm")
    by_type: dict = {}
    for row in rows.values():
        by_type.setdefault(row["image_type"], []).append(row)
    assert set(by_type) == {"dermoscopic", "clinical: close-up", "clinical: overview", "TBP tile: close-up"}
    for row in by_type["clinical: overview"]:
        assert row["status"] == "skipped" and row["path"] is None and "clinical: overview" in row["error"]
        assert not (tmp_path / "wsm" / f"{row['isic_id']}.png").exists()
    assert {r["status"] for t, rs in by_type.items() if t != "clinical: overview" for r in rs} == {"ok"}
    assert "no map, by the pipeline's [image_types] skip" in capsys.readouterr().err

    # the close-up photographs' maps come from the box segmenter: without it they change, the others do not
    plain = _generate(typed_data, typed_bundle, tmp_path / "plain",
                      "--set", "image_types.overrides.clinical: close-up.box_prompt.enabled=false")
    def map_bytes(folder, isic_id):
        return (folder / f"{isic_id}.png").read_bytes()
    close_ups = [r["isic_id"] for r in by_type["clinical: close-up"]]
    others = [r["isic_id"] for t in ("dermoscopic", "TBP tile: close-up") for r in by_type[t]]
    assert any(map_bytes(tmp_path / "wsm", i) != map_bytes(tmp_path / "plain", i) for i in close_ups)
    assert all(map_bytes(tmp_path / "wsm", i) == map_bytes(tmp_path / "plain", i) for i in others)
    assert plain[close_ups[0]]["image_type"] == "clinical: close-up"


def test_maps_that_fail_their_type_s_framing_check_are_predicted_to_fail(typed_data, typed_bundle, tmp_path,
                                                                         capsys):
    strict = "image_types.overrides.clinical: close-up.framing.max_area=0.001"   # any lesion fails it
    rows = _generate(typed_data, typed_bundle, tmp_path / "strict", "--set", strict)
    said = "".join(capsys.readouterr())
    loose = _generate(typed_data, typed_bundle, tmp_path / "loose", "--set",
                      "image_types.overrides.clinical: close-up.framing.max_area=1")
    close_ups = [i for i, r in rows.items() if r["image_type"] == "clinical: close-up"]
    others = [i for i, r in rows.items() if r["image_type"] in ("dermoscopic", "TBP tile: close-up")]
    found = [i for i in close_ups if rows[i]["lesion_fraction"] > 0]
    assert found and all(rows[i]["predicted_jaccard"] == 0 and rows[i]["predicted_fail"] for i in found)
    zero = sum(r["predicted_jaccard"] == 0 for r in rows.values() if r["status"] == "ok")
    assert f"{zero} of them predicted 0 (no lesion found, or a map that fails its image type's [framing]" in said
    assert any(loose[i]["predicted_jaccard"] > 0 for i in found)          # the check, not the model, said 0
    assert all(rows[i]["predicted_jaccard"] == loose[i]["predicted_jaccard"] for i in others)
    assert all((tmp_path / "strict" / f"{i}.png").read_bytes() == (tmp_path / "loose" / f"{i}.png").read_bytes()
               for i in close_ups)                                          # it judges the map, it does not change it


def test_images_of_a_folder_take_the_type_given(typed_bundle, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for path in sorted((SAMPLE / "images").glob("*.jpg"))[:2]:
        (images / path.name).write_bytes(path.read_bytes())
    assert main(["-q", "generate", "--workers", "0", "-i", str(images), "--bundle", str(typed_bundle),
                 "--out", str(tmp_path / "wsm"), "--image-type", "clinical: overview"]) == 0
    rows = pq.read_table(tmp_path / "wsm" / "manifest.parquet").to_pylist()
    assert [r["status"] for r in rows] == ["skipped", "skipped"]


def test_fit_calibrates_each_image_on_the_maps_generate_makes_for_its_type(typed_data, typed_bundle):
    """Calibration and the quality model see the evidence generate decides on: box-prompted for the close-up types,
    the prior's map for the rest; images of a type that gets no map calibrate nothing."""
    from wsm.fit.driver import calibration_samples
    from wsm.folders.bundle import load_bundle
    from wsm.selection import read_manifest, read_truth, with_truth

    bundle = load_bundle(typed_bundle)
    rows = with_truth(read_manifest(typed_data), read_truth(typed_data)).head(12)
    models = bundle.load_models()
    samples = calibration_samples(bundle.recipes, typed_data, rows, models)
    types = dict(zip(rows["isic_id"], rows["image_type"]))
    assert {s.isic_id for s in samples} == {i for i, t in types.items() if t != "clinical: overview"}
    changed = {True: [], False: []}      # box-prompted or not -> whether the map differs from the prior's
    for sample in samples:
        assert sample.recipe_key == {"": "TBP tile: close-up"}.get(types[sample.isic_id], types[sample.isic_id])
        prior_alone = models.evidence([sample.pre.image])[0]["prior"]
        box_prompted = bundle.recipes[sample.recipe_key].box_prompt.enabled
        changed[box_prompted].append(not np.allclose(sample.maps["prior"], prior_alone, atol=1e-4))   # (batching)
    assert any(changed[True]) and not any(changed[False]), changed   # (a prior that finds no lesion: no box)


def test_fit_refuses_calibration_masks_all_of_a_type_without_maps(typed_bundle, tmp_path, capsys):
    from archive_client.importer import import_folders

    images, masks = tmp_path / "images", tmp_path / "masks"     # new ids: the bundle was fitted on the sample's
    images.mkdir()
    masks.mkdir()
    for n, path in enumerate(sorted((SAMPLE / "images").glob("*.jpg"))[:3]):
        (images / f"overview{n}.jpg").write_bytes(path.read_bytes())
        mask = SAMPLE / "masks" / f"{path.stem}_segmentation.png"
        (masks / f"overview{n}_segmentation.png").write_bytes(mask.read_bytes())
    import_folders(tmp_path / "DATA", images=images, masks=masks, challenge="mine", split="train", progress=False,
                   image_type="clinical: overview")
    assert main(["-q", "fit", "--data", str(tmp_path / "DATA"), "--from-bundle", str(typed_bundle),
                 "--out", str(tmp_path / "bundle"), "--set", "fit.eval_fraction=0"]) == 2
    assert "all of image types the pipeline makes no map for ([image_types] skip)" in capsys.readouterr().err


def test_the_cascade_segments_a_crop_round_the_lesion_the_prior_found(typed_bundle):
    """Generate's road with the cascade: an image whose prior finds a lesion is replaced by the crop round it, cut
    from its detail copy, and the evidence is the crop's; an image with none stays whole; off, nothing changes."""
    from dataclasses import replace

    from wsm.folders.bundle import load_bundle
    from wsm.mapping import prepare
    from wsm.stages.cascade import crop_region, pixel_box, view_of_crop

    bundle = load_bundle(typed_bundle)
    models = bundle.load_models()
    recipe = replace(bundle.recipe, cascade=TINY_CASCADE)
    pres = [prepare(path, recipe.preprocess, detail_side=128) for path in sorted((SAMPLE / "images").glob("*.jpg"))]
    whole = models.evidence([pre.image for pre in pres])
    after, maps = models.cascaded_evidence(pres, [recipe] * len(pres))
    cropped = 0
    for pre, before, new, evidence in zip(pres, whole, after, maps):
        assert pre.detail.shape[0] == 128 and new.detail is None and new.original_size == pre.original_size
        region = crop_region(before["prior"], pre.valid_mask, recipe.cascade)
        if region is None:
            assert new.placement is None and new.whole_view is None
            assert np.array_equal(evidence["prior"], before["prior"])
            continue
        cropped += 1
        slack = pre.original_size[0] / pre.detail.shape[1] + 1      # cut at the detail copy's whole pixels
        assert np.abs(np.subtract(new.placement, pixel_box(region, pre.original_size))).max() <= slack
        assert not np.array_equal(new.image, pre.image)
        np.testing.assert_allclose(evidence["prior"], models.evidence([new.image])[0]["prior"], atol=1e-4)
        assert np.array_equal(new.whole_view, view_of_crop(before["prior"], new))    # the second view, for quality
    assert cropped > 0
    off = replace(recipe, cascade=CascadeConfig())
    same, plain = models.cascaded_evidence(pres, [off] * len(pres))
    assert all(p.placement is None for p in same)
    assert all(np.array_equal(a["prior"], b["prior"]) for a, b in zip(plain, whole))


def test_the_quality_model_learns_a_cascaded_image_on_its_crop_and_the_mask_there(typed_data, typed_bundle):
    """The samples the quality model learns on take generate's road through the cascade: a cascaded image's sample
    is the crop, with the crop's evidence and the official mask cut to the same place; calibration's samples are
    the images whole."""
    from dataclasses import replace

    from wsm.fit.driver import calibration_samples
    from wsm.folders.bundle import load_bundle
    from wsm.io.images import read_mask
    from wsm.selection import read_manifest, read_truth, with_truth

    bundle = load_bundle(typed_bundle)
    recipes = {key: replace(recipe, cascade=TINY_CASCADE) for key, recipe in bundle.recipes.items()}
    rows = with_truth(read_manifest(typed_data), read_truth(typed_data))
    models = bundle.load_models()
    samples = calibration_samples(recipes, typed_data, rows, models)
    assert all(s.pre.placement is None for s in calibration_samples(recipes, typed_data, rows, models, cascade=False))
    masks = dict(zip(rows["isic_id"], rows["mask_file"]))
    cascaded = [s for s in samples if s.pre.placement is not None]
    assert cascaded and all(s.pre.whole_view is not None for s in cascaded)    # with the whole image's view
    for sample in cascaded:
        x0, y0, x1, y1 = sample.pre.placement
        mask = read_mask(typed_data / masks[sample.isic_id])
        size = sample.truth.shape[0]
        expected = cv2.resize(mask[y0:y1, x0:x1], (size, size), interpolation=cv2.INTER_NEAREST) > 128
        assert np.array_equal(sample.truth, expected)
        outside = (mask > 128).sum() - (mask[y0:y1, x0:x1] > 128).sum()        # counted as missed, per crop pixel
        assert sample.missed == pytest.approx(outside * size * size / ((x1 - x0) * (y1 - y0)))


def _generate_folder(images: Path, bundle: Path, out: Path, *settings: str) -> None:
    assert main(["-q", "generate", "--workers", "1", "-i", str(images), "--bundle", str(bundle), "--out", str(out),
                 "--image-type", "dermoscopic", *settings]) == 0


def _cascade_put_back(images: Path, bundle_folder: Path, with_cascade: Path, without: Path) -> int:
    """How many maps of ``images`` the cascade made from a crop; every map has its image's size, and a crop's map
    is background outside the crop and differs from the map made without the cascade."""
    from dataclasses import replace

    from PIL import Image

    from wsm.folders.bundle import load_bundle
    from wsm.mapping import prepare

    bundle = load_bundle(bundle_folder)
    recipe = replace(bundle.recipe, cascade=TINY_CASCADE)
    paths = sorted(images.glob("*.jpg"))
    pres, _ = bundle.load_models().cascaded_evidence(
        [prepare(p, recipe.preprocess, detail_side=TINY_CASCADE.detail_side) for p in paths], [recipe] * len(paths))
    cropped = 0
    for path, pre in zip(paths, pres):
        made = np.asarray(Image.open(with_cascade / f"{path.stem}.png"))
        plain = np.asarray(Image.open(without / f"{path.stem}.png"))
        assert made.shape == plain.shape == pre.original_size[::-1]
        if pre.placement is None:
            assert np.array_equal(made, plain)
            continue
        cropped += 1
        x0, y0, x1, y1 = pre.placement
        outside = np.ones(made.shape, bool)
        outside[y0:y1, x0:x1] = False
        assert not np.array_equal(made, plain) and (made[outside] == 0).all()
    return cropped


TINY_SETTINGS = [a for key in ("threshold", "max_area", "grow", "detail_side")
                 for a in ("--set", f"cascade.{key}={getattr(TINY_CASCADE, key)}")]


def test_generate_with_the_cascade_puts_each_crop_s_map_back_into_its_frame(typed_bundle, tmp_path):
    """Dermoscopic images of a folder through generate's workers: the maps of the images the prior finds a lesion
    in change with the cascade, keep their image's size, and are background outside the crop."""
    images = tmp_path / "images"
    images.mkdir()
    for path in sorted((SAMPLE / "images").glob("*.jpg"))[:4]:
        (images / path.name).write_bytes(path.read_bytes())
    _generate_folder(images, typed_bundle, tmp_path / "cascade", *TINY_SETTINGS)
    _generate_folder(images, typed_bundle, tmp_path / "plain", "--set", "cascade.enabled=false")
    assert _cascade_put_back(images, typed_bundle, tmp_path / "cascade", tmp_path / "plain") > 0


def test_real_whole_frames_go_through_the_cascade(shared_data, typed_bundle, tmp_path):
    """Two ISIC 2017 frames at full resolution (up to 4288 px) through generate with the cascade: maps at the
    frames' own size, and a crop's map (where the tiny test prior finds a lesion, which on these it may not) put
    back in its place. The crop's geometry on real frames is tested with their true masks in
    tests/wsm/stages/test_stages_cascade.py."""
    root = shared_data / "isic2017-fullres-sample" / "images"
    if not root.is_dir():
        pytest.skip(f"needs {root}")
    images = tmp_path / "images"
    images.mkdir()
    for path in sorted(root.glob("*.jpg"))[:2]:
        (images / path.name).write_bytes(path.read_bytes())
    _generate_folder(images, typed_bundle, tmp_path / "cascade", *TINY_SETTINGS)
    _generate_folder(images, typed_bundle, tmp_path / "plain", "--set", "cascade.enabled=false")
    _cascade_put_back(images, typed_bundle, tmp_path / "cascade", tmp_path / "plain")


def _clinical_pairs(shared_data, n: int):
    """The first n DermIS photographs at the working size 256 and their true lesion masks."""
    from wsm.models.inputs import preprocessed_file, truth_at
    from wsm.stages.preprocess import PreprocessConfig

    root = shared_data / "clinical-dermis"
    if not (root / "pairs.csv").exists():
        pytest.skip(f"needs {root}")
    with open(root / "pairs.csv", newline="") as fh:
        pairs = list(csv.DictReader(fh))[:n]
    cfg = PreprocessConfig(working_size=256)
    return [preprocessed_file(root / p["image"], cfg) for p in pairs], [truth_at(root / p["mask"], 256) for p in pairs]


def _jaccard(prob: np.ndarray, truth: np.ndarray) -> float:
    return float(((prob > 0.5) & truth).sum() / ((prob > 0.5) | truth).sum())


@pytest.fixture(scope="module")
def box_segmenter():
    from wsm.models.medsam import load_box_segmenter

    return load_box_segmenter()


def test_the_box_segmenter_outlines_real_clinical_lesions_from_their_box(shared_data, box_segmenter):
    """LiteMedSAM, prompted with the true lesion's box (grown by the default margin) on real clinical photographs
    it never saw, outlines them: the packaged weights load and the prompt is in the right pixels."""
    from wsm.models.medsam import box_prob

    pres, truths = _clinical_pairs(shared_data, 4)
    boxes = [lesion_box(t.astype(np.float32), np.ones_like(t), 0.5, 0.02) for t in truths]
    jaccards = [_jaccard(box_prob(box_segmenter, p.image, b), t) for p, b, t in zip(pres, boxes, truths)]
    assert np.mean(jaccards) > 0.75, jaccards
    shifted = box_prob(box_segmenter, pres[0].image, (0, 0, 40, 40))   # a box off the lesion
    assert ((shifted > 0.5) & truths[0]).sum() < 0.2 * truths[0].sum()


def test_further_rounds_prompt_with_the_box_of_the_segmenter_s_own_map(shared_data, box_segmenter):
    """From a box far too large (the lesion's grown by 15% of the side), prompting again with the box of the
    segmenter's own map comes closer to the lesion; one round is the first box alone."""
    from functools import partial

    from wsm.models.medsam import box_prob
    from wsm.stages.box_prompt import BoxPromptConfig, own_box

    pres, truths = _clinical_pairs(shared_data, 8)
    config = BoxPromptConfig(enabled=True, rounds=3)
    once, again = [], []
    for pre, truth in zip(pres, truths):
        loose = lesion_box(truth.astype(np.float32), np.ones_like(truth), 0.5, 0.15)
        next_box = partial(own_box, valid_mask=pre.valid_mask, config=config)
        once.append(_jaccard(box_prob(box_segmenter, pre.image, loose, rounds=1, next_box=next_box), truth))
        again.append(_jaccard(box_prob(box_segmenter, pre.image, loose, rounds=3, next_box=next_box), truth))
    assert np.mean(again) > np.mean(once) + 0.01, (once, again)


def test_a_run_with_box_prompted_images_gives_the_networks_half_the_cores():
    from types import SimpleNamespace

    from wsm.generate.plan import cpu_split, heavy_net_on_cpu

    models, recipe = SimpleNamespace(classifier=None, prior=object()), recipes_by_type(load_pipeline("default"))
    base = recipe[DEFAULT_TYPE]
    assert not heavy_net_on_cpu(models, base, "cpu") and heavy_net_on_cpu(models, base, "cpu", box_prompts=True)
    assert not heavy_net_on_cpu(models, base, "cuda", box_prompts=True)
    assert cpu_split(8, True) == (4, 4) and cpu_split(8, False) == (8, 2)


def test_an_unknown_image_type_is_refused_with_the_archive_s_list(tmp_path, capsys):
    assert main(["generate", "-i", str(tmp_path), "--bundle", str(tmp_path), "-o", str(tmp_path / "wsm"),
                 "--image-type", "clinical"]) == 2
    assert "'clinical' is not an image type of the archive; one of: dermoscopic," in capsys.readouterr().err
