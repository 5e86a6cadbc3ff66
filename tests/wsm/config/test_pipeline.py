"""Pipeline files: every shipped recipe loads; overrides, per-device tables and errors behave."""
import dataclasses
import tomllib
from pathlib import Path

import pytest

from wsm.config.pipeline import PIPELINES_DIR, PipelineError, load_pipeline, parse_override, pipeline_hash, to_toml
from wsm.config.recipe import build_recipe
from wsm.fit.driver import work_dir


@pytest.mark.parametrize("name", sorted(p.stem for p in PIPELINES_DIR.glob("*.toml")))
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_every_shipped_pipeline_builds(name, device):
    resolved = load_pipeline(name, device)
    if resolved.get("method") in (None, "weak", "cam-only", "classic"):
        recipe = build_recipe(resolved)
        assert recipe.name == name
    assert tomllib.loads(to_toml(resolved)) == resolved      # the bundle's pipeline.toml round-trips


def test_device_tables_and_overrides():
    cpu, cuda = build_recipe(load_pipeline("default", "cpu")), build_recipe(load_pipeline("default", "cuda"))
    assert cpu.classifier.size < cuda.classifier.size
    over = build_recipe(load_pipeline("default", "cpu", ["classifier.epochs=2", "cam.method=layercam",
                                                         "crf.enabled=false"]))
    assert (over.classifier.epochs, over.cam.method, over.refine.crf) == (2, "layercam", None)
    assert parse_override('prior.encoder="resnet10t"') == (["prior", "encoder"], "resnet10t")
    assert pipeline_hash(load_pipeline("default")) != pipeline_hash(load_pipeline("default", "cuda"))


def test_errors_name_what_is_wrong(tmp_path):
    with pytest.raises(PipelineError, match="valid keys"):
        build_recipe(load_pipeline("default", overrides=["classifier.depth=3"]))
    with pytest.raises(PipelineError, match="section.key=value"):
        parse_override("classifier.epochs")
    with pytest.raises(PipelineError, match="default"):
        load_pipeline("no-such-recipe")
    bad = tmp_path / "bad.toml"
    bad.write_text("method = [")
    with pytest.raises(PipelineError, match="not valid TOML"):
        load_pipeline(bad)
    with pytest.raises(PipelineError, match="method is one of"):
        build_recipe(load_pipeline("default", overrides=["method=magic"]))


def test_checkpoints_are_keyed_by_model_settings(tmp_path):
    recipe = build_recipe(load_pipeline("default"))
    same = work_dir(tmp_path, "classifier", recipe.classifier, recipe)
    assert same == work_dir(tmp_path, "classifier", recipe.classifier, recipe)
    resized = dataclasses.replace(recipe.classifier, size=recipe.classifier.size * 2)
    assert work_dir(tmp_path, "classifier", resized, recipe) != same
    assert Path(same).parent == tmp_path


@pytest.mark.parametrize("override, message", [
    ("classifier.epochs=2.5", "epochs = 2.5: expected a whole number"),
    ("prior.flip_tta=1", "flip_tta = 1: expected true or false"),
    ("prior.lr=nan", "lr = nan: expected a finite number"),
    ("prior.encoder=18", "encoder = 18: expected a string"),
    ("prior.augment_scale=0.8", r"augment_scale = 0.8: expected a list of 2 values"),
    ("prior.augment_scale=[1.0, 0.6]", "0 < low <= high"),
    ("prior.augment_stretch=0.5", "give 1 or more"),
    ("prior.encoder_lr_scale=0", "encoder_lr_scale = 0.0: give a number > 0"),
    ("prior.warmup_fraction=1", r"warmup_fraction = 1.0: give a fraction of the steps in \[0, 1\)"),
    ("prior.early_size=100", r"early_size = 100: give a multiple of 32 from 64 to size"),
    ("prior.early_size=32", r"early_size = 32: give a multiple of 32 from 64 to size"),
    ("prior.early_size=256", r"early_size = 256: give a multiple of 32 from 64 to size"),
    ("prior.early_fraction=1", r"early_fraction = 1.0: give the fraction of the epochs in \[0, 1\)"),
    ("fusion.weights.cam=-0.5", "finite weight >= 0"),
    ("crf.size=8", r"\[crf\] size = 8: give 0 \(the image's own size\) or at least 16"),
    ('decision.band_side="inside"', r"\[decision\] band_side must be 'both' or 'outside'"),
])
def test_values_of_the_wrong_type_or_range_are_refused_before_any_work(override, message):
    with pytest.raises(PipelineError, match=message):
        build_recipe(load_pipeline("default", overrides=[override]))


def test_values_are_coerced_to_the_field_type():
    recipe = build_recipe(load_pipeline("default", overrides=["prior.lr=1", "prior.augment_scale=[0.6, 1]"]))
    assert recipe.prior.lr == 1.0 and isinstance(recipe.prior.lr, float)
    assert recipe.prior.augment_scale == (0.6, 1.0)


def test_early_epochs_leave_the_last_epoch_at_the_full_size():
    prior = build_recipe(load_pipeline("default", overrides=["prior.size=192", "prior.early_size=128",
                                                             "prior.early_fraction=0.8"])).prior
    assert [prior.early_epochs(n) for n in (15, 10, 3, 1)] == [12, 8, 2, 0]
    assert dataclasses.replace(prior, early_fraction=0.29).early_epochs(100) == 29
    off = dataclasses.replace(prior, early_size=0)
    assert off.early_epochs(15) == 0


def test_networks_train_on_pixels_preprocessed_as_generate_shows_them():
    from wsm.fit.driver import pixels_key, training_pixels

    plain = build_recipe(load_pipeline("default"))
    assert training_pixels(plain) is None and pixels_key(plain) == {}      # resized files: the default's key stays
    balanced = build_recipe(load_pipeline("default", overrides=["preprocess.colour_constancy=true"]))
    assert training_pixels(balanced) == balanced.preprocess
    hairless = build_recipe(load_pipeline("default", overrides=["preprocess.hair_removal=true"]))
    assert training_pixels(hairless).hair_removal
    assert pixels_key(balanced) != pixels_key(hairless) != {}          # a checkpoint folder per preprocessing


def test_a_missing_fusion_weight_is_a_pipeline_error():
    from wsm.mapping import fusion_weights

    recipe = build_recipe(load_pipeline("default", overrides=["fusion.weights={prior = 1.0}"]))
    with pytest.raises(PipelineError, match="no weight for \\['cam'\\]"):
        fusion_weights(recipe, ["cam", "prior"])


def test_checkpoint_keys_ignore_inference_only_settings(tmp_path):
    recipe = build_recipe(load_pipeline("default"))
    key = work_dir(tmp_path, "prior", recipe.prior, recipe)
    assert work_dir(tmp_path, "prior", dataclasses.replace(recipe.prior, flip_tta=not recipe.prior.flip_tta),
                    recipe) == key
    assert work_dir(tmp_path, "prior", dataclasses.replace(recipe.prior, augment_stretch=1.5), recipe) != key
    assert work_dir(tmp_path, "prior", dataclasses.replace(recipe.prior, augment_colour=True), recipe) != key


def test_prior_augmentation_follows_its_settings():
    from wsm.fit.driver import prior_augment_config
    from wsm.learn.augment import COLOUR_JITTER, SEGMENTER_AUGMENT

    plain = build_recipe(load_pipeline("default", overrides=["prior.augment_colour=false",
                                                             "prior.augment_scale=[1, 1]",
                                                             "prior.augment_stretch=1"])).prior
    assert prior_augment_config(plain) == SEGMENTER_AUGMENT
    strong = dataclasses.replace(plain, augment_scale=(0.75, 1.25), augment_stretch=1.25, augment_colour=True)
    cfg = prior_augment_config(strong)
    assert (cfg.scale, cfg.stretch) == ((0.75, 1.25), 1.25)
    assert {name: getattr(cfg, name) for name in COLOUR_JITTER} == COLOUR_JITTER
    assert cfg.dropout_p == SEGMENTER_AUGMENT.dropout_p
