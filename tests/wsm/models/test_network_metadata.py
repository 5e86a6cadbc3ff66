"""A saved network describes itself (wsm.models.card): the weights of a BUNDLE and of a RUN carry their
architecture, encoder, classes, channels, input size and normalisation, readers build the network from that
description, files written before descriptions still load, and a description that disagrees is refused."""
from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402
from torch.utils.data import Dataset  # noqa: E402

from wsm.errors import UserError  # noqa: E402
from wsm.folders.bundle import BundleError, load_bundle, write_pipeline, BundleFolder  # noqa: E402
from wsm.learn.loop import TrainConfig, load_weights, save_network, save_weights, train  # noqa: E402
from wsm.models.card import (CARD_FORMAT, NetworkCard, NetworkCardError, card_of, network_card,  # noqa: E402
                             read_card, record_input_size)
from wsm.models.classifier import create_classifier  # noqa: E402
from wsm.models.inputs import ISIC_MEAN, ISIC_STD  # noqa: E402
from wsm.models.segmentation import Linknet, Unet, create_segmenter  # noqa: E402

torch.set_num_threads(1)


def _header(path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as fh:
        return dict(fh.metadata() or {})


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key, value in sa.items():
        torch.testing.assert_close(sb[key], value, rtol=0, atol=0, msg=key)


def _segmenter(arch="unet", size=64):
    torch.manual_seed(0)
    model = create_segmenter(arch, "test_resnet")
    record_input_size(model, size)
    return model


# ------------------------------------------------------------------------------------------- the description

def test_a_segmenter_saved_and_reloaded_carries_its_description(tmp_path):
    model = _segmenter()
    assert card_of(model) == NetworkCard("segmenter", "unet", "test_resnet", num_classes=1, in_chans=3,
                                         input_size=64)
    path = tmp_path / "prior.safetensors"
    save_network(model, path)
    header = _header(path)
    assert header == {"wsm.card": str(CARD_FORMAT), "wsm.network": "segmenter", "wsm.arch": "unet",
                      "wsm.encoder": "test_resnet", "wsm.num_classes": "1", "wsm.in_chans": "3",
                      "wsm.input_size": "64", "wsm.mean": "0.6681,0.5301,0.5247", "wsm.std": "0.1337,0.148,0.1595"}
    card = read_card(path)
    assert card == card_of(model) and card.mean == ISIC_MEAN and card.std == ISIC_STD
    rebuilt = card.build()
    load_weights(rebuilt, path)
    assert isinstance(rebuilt, Unet) and card_of(rebuilt) == card
    _same_weights(model, rebuilt)


def test_the_same_network_saved_twice_gives_the_same_bytes(tmp_path):
    model = _segmenter()
    saved = []
    for i in range(8):      # safetensors itself writes header metadata in a random order
        save_network(model, tmp_path / f"{i}.safetensors")
        saved.append((tmp_path / f"{i}.safetensors").read_bytes())
    assert len(set(saved)) == 1
    size = int.from_bytes(saved[0][:8], "little")
    assert list(json.loads(saved[0][8:8 + size])["__metadata__"]) == sorted(network_card(model))


def test_a_classifier_saved_and_reloaded_carries_its_description(tmp_path):
    torch.manual_seed(0)
    model = create_classifier("test_resnet", num_classes=4, in_chans=4)
    path = tmp_path / "classifier.safetensors"
    save_network(model, path)
    card = read_card(path)
    assert card == NetworkCard("classifier", "test_resnet", num_classes=4, in_chans=4)
    assert "wsm.encoder" not in _header(path) and "wsm.input_size" not in _header(path)   # neither is known
    rebuilt = card.build()
    load_weights(rebuilt, path)
    _same_weights(model, rebuilt)


class _Squares(Dataset):
    """Four tiny images, at the size a wsm dataset calls ``final_size``."""
    final_size = 32

    def __len__(self):
        return 4

    def __getitem__(self, index):
        g = torch.Generator().manual_seed(index)
        return torch.randn(3, 32, 32, generator=g), torch.tensor(index % 2)


def test_training_writes_the_description_and_the_size_it_trained_at(tmp_path):
    torch.manual_seed(0)
    model = create_classifier("test_resnet", num_classes=2)
    result = train(model, _Squares(), torch.nn.CrossEntropyLoss(), TrainConfig(epochs=1, batch_size=2), tmp_path,
                   progress=False)
    assert read_card(result.weights) == NetworkCard("classifier", "test_resnet", num_classes=2, input_size=32)
    assert card_of(model).input_size == 32           # a bundle saving this network afterwards writes it too
    save_network(model, tmp_path / "classifier.safetensors")
    assert read_card(tmp_path / "classifier.safetensors").input_size == 32
    # a network built otherwise has no description, and its file none
    plain = torch.nn.Linear(2, 2)
    assert network_card(plain) == {} and read_card(save_weights(plain, tmp_path / "plain.safetensors")) is None


def test_an_unreadable_or_newer_description_is_refused_in_one_line(tmp_path):
    path = tmp_path / "model.safetensors"
    save_weights(_segmenter(), path, {**network_card(_segmenter()), "wsm.card": str(CARD_FORMAT + 1)})
    with pytest.raises(NetworkCardError, match="newer wsm"):
        read_card(path)
    save_weights(_segmenter(), path, {**network_card(_segmenter()), "wsm.num_classes": "many"})
    with pytest.raises(NetworkCardError, match="damaged network description"):
        read_card(path)
    path.write_bytes(b"")
    with pytest.raises(NetworkCardError, match="not a readable safetensors"):
        read_card(path)
    with pytest.raises(FileNotFoundError):
        read_card(tmp_path / "missing.safetensors")


def test_a_description_that_disagrees_names_both():
    card = NetworkCard("segmenter", "unet", "test_resnet", input_size=64)
    card.check("prior.safetensors", "the recipe", arch="unet", encoder="test_resnet", input_size=64, in_chans=None)
    NetworkCard("segmenter", "unet", "test_resnet").check("f", "the recipe", input_size=96)   # size unknown: any
    with pytest.raises(NetworkCardError) as info:
        card.check("prior.safetensors", "the recipe", arch="linknet", input_size=96)
    message = str(info.value)
    assert "\n" not in message and isinstance(info.value, UserError)
    assert "prior.safetensors holds a unet / test_resnet segmenter" in message and "64 px" in message
    assert "the recipe asks for a linknet / test_resnet segmenter" in message and "96 px" in message
    assert "differ in arch, input_size" in message
    other = NetworkCard("segmenter", "unet", "test_resnet", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    with pytest.raises(NetworkCardError, match="differ in mean, std"):     # wsm feeds every network ISIC's
        other.check("imagenet.safetensors", "the recipe", arch="unet")


# ------------------------------------------------------------------------------------------- a bundle

def _bundle(tmp_path, prior, **sets):
    """A bundle with a prior only (``prior`` saved as prior.safetensors by ``prior(path)``)."""
    from wsm.config.pipeline import load_pipeline

    overrides = ["classifier.enabled=false", "prior.encoder=test_resnet", "prior.size=64",
                 *(f"prior.{k}={v}" for k, v in sets.items())]
    folder = BundleFolder(tmp_path / "B")
    folder.root.mkdir(parents=True)
    write_pipeline(folder, load_pipeline("default", "cpu", overrides))
    folder.provenance.write_text(json.dumps({"classes": []}))
    prior(folder.prior)
    return load_bundle(folder.root)


def test_a_bundle_loads_its_prior_from_the_description_and_from_an_older_file_alike(tmp_path):
    model = _segmenter()
    described = _bundle(tmp_path / "new", lambda path: save_network(model, path))
    old = _bundle(tmp_path / "old", lambda path: save_weights(model, path))      # written before descriptions
    assert read_card(old.folder / "prior.safetensors") is None
    for bundle in (described, old):
        prior = bundle.load_models(skip_unweighted=False).prior
        assert isinstance(prior, Unet) and not prior.training
        _same_weights(model, prior)
        assert card_of(prior) == card_of(model)      # the old file's network is described by the recipe
    images = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(described.load_models(skip_unweighted=False).prior(images),
                                   old.load_models(skip_unweighted=False).prior(images), rtol=0, atol=0)


@pytest.mark.parametrize("sets,differ", [({"arch": '"linknet"'}, "arch"), ({"size": 96}, "input_size")])
def test_a_bundle_whose_prior_disagrees_with_its_pipeline_is_refused(tmp_path, sets, differ):
    model = _segmenter()
    bundle = _bundle(tmp_path, lambda path: save_network(model, path), **sets)
    with pytest.raises(BundleError, match=f"holds a unet / test_resnet segmenter.*pipeline.toml asks for.*{differ}"):
        bundle.load_models(skip_unweighted=False)


# ------------------------------------------------------------------------------------------- a RUN

def _run(tmp_path, model, options, described=True, name="RUN"):
    run = tmp_path / name
    run.mkdir()
    save_weights(model, run / "model.safetensors", network_card(model) if described else None)
    (run / "config.json").write_text(json.dumps({"options": options}))
    (run / "train_ids.txt").write_text("ISIC_0000001\tofficial\n")
    return run


RUN_OPTIONS = {"arch": "linknet", "encoder": "test_resnet", "size": 64, "num_classes": 1}


def test_prior_run_builds_the_network_its_file_describes(tmp_path):
    from wsm.fit.prior_run import load_prior, prior_run_settings

    model = _segmenter("linknet")
    run = _run(tmp_path, model, {"num_classes": 1})      # config.json does not even name the network
    overrides, fitted = prior_run_settings(run)
    assert overrides[:3] == ('prior.arch="linknet"', 'prior.encoder="test_resnet"', "prior.size=64")
    assert fitted == {"ISIC_0000001"}
    prior, source = load_prior(run, "linknet", "test_resnet")
    assert isinstance(prior, Linknet) and card_of(prior) == card_of(model) and source["source"] == "run"
    _same_weights(model, prior)
    save_network(prior, tmp_path / "prior.safetensors")          # what fit writes into the bundle
    assert read_card(tmp_path / "prior.safetensors") == card_of(model)


def test_prior_run_still_takes_a_run_saved_before_descriptions(tmp_path):
    from wsm.fit.prior_run import load_prior, prior_run_settings

    model = _segmenter("linknet")
    run = _run(tmp_path, model, RUN_OPTIONS, described=False)
    overrides, _ = prior_run_settings(run)
    assert overrides[:3] == ('prior.arch="linknet"', 'prior.encoder="test_resnet"', "prior.size=64")
    prior, _ = load_prior(run, "linknet", "test_resnet")
    _same_weights(model, prior)
    assert card_of(prior) == card_of(model)      # described now from config.json: the bundle's copy will be


def test_prior_run_refuses_a_file_that_is_not_the_network_asked_for(tmp_path):
    from wsm.fit.prior_run import PriorRunError, load_prior, prior_run_settings

    run = _run(tmp_path, _segmenter("unet"), RUN_OPTIONS)      # config.json says linknet, the file holds a U-Net
    with pytest.raises(PriorRunError, match="holds a unet / test_resnet segmenter.*config.json asks for a linknet"):
        prior_run_settings(run)
    with pytest.raises(PriorRunError, match=r"holds a unet .*the recipe's \[prior\] asks for a linknet"):
        load_prior(run, "linknet", "test_resnet")
    torch.manual_seed(0)
    multi = create_segmenter("linknet", "test_resnet", num_classes=3)
    with pytest.raises(PriorRunError, match="segments 3 classes"):
        prior_run_settings(_run(tmp_path, multi, {}, name="MULTI"))


def test_load_model_builds_from_the_description_and_still_loads_older_runs(tmp_path):
    from wsm.train import load_model

    model = _segmenter("linknet")
    for name, described in (("NEW", True), ("OLD", False)):
        loaded, config = load_model(_run(tmp_path, model, RUN_OPTIONS, described, name=name))
        assert isinstance(loaded, Linknet) and not loaded.training and config["options"] == RUN_OPTIONS
        _same_weights(model, loaded)


def test_load_model_refuses_a_file_that_disagrees_with_config_json(tmp_path):
    from wsm.errors import WsmError
    from wsm.train import load_model

    run = _run(tmp_path, _segmenter("unet"), RUN_OPTIONS)
    with pytest.raises(WsmError, match="holds a unet / test_resnet segmenter.*config.json asks for a linknet.*arch"):
        load_model(run)
