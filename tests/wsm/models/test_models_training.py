"""Augmentation, class mapping and datasets, and the training loop (loss goes down, resume, determinism, weights)."""
from __future__ import annotations

import dataclasses
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from wsm.models.classifier import create_classifier  # noqa: E402
from wsm.models.segmentation import create_segmenter  # noqa: E402
from wsm.models.inputs import denormalize, normalize  # noqa: E402
from wsm.learn.augment import WEAK_MAP_AUGMENT, AugmentConfig, augment  # noqa: E402
from wsm.learn.datasets import (ISIC_CLASS_TABLE, ClassifierDataset, ClassMapping, SegmentationDataset,  # noqa: E402
                                segmentation_rows)
from wsm.learn.loop import (TrainConfig, _param_groups, class_weights, classification_loss, load_weights,  # noqa: E402
                            lr_factor, save_weights, train)
from wsm.learn.losses import BCEDice  # noqa: E402

torch.set_num_threads(1)

GEOMETRY_ONLY = AugmentConfig(poisson_lambda=(0, 0), gamma=(1, 1), blur_sigma=(0, 0), dropout_p=(0, 0))


def _square(size=64, box=(10, 14, 30, 40)):
    """A white off-centre rectangle on black, and its mask."""
    image = np.zeros((size, size, 3), np.uint8)
    mask = np.zeros((size, size), np.uint8)
    y0, x0, y1, x1 = box
    image[y0:y1, x0:x1] = 255
    mask[y0:y1, x0:x1] = 1
    return image, mask


def _iou(a, b):
    return (a & b).sum() / max(1, (a | b).sum())


# ------------------------------------------------------------------------------------------------ augment

def test_augment_is_deterministic_given_the_generator():
    image, mask = _square()
    a = augment(np.random.default_rng(7), image, mask)
    b = augment(np.random.default_rng(7), image, mask)
    c = augment(np.random.default_rng(8), image, mask)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    assert a[0].dtype == np.uint8 and a[0].shape == image.shape
    assert a[1].dtype == np.uint8 and a[1].shape == mask.shape and set(np.unique(a[1])) <= {0, 1}


@pytest.mark.parametrize("cfg,min_iou", [(GEOMETRY_ONLY, 0.9), (AugmentConfig(), 0.8)])
def test_mask_stays_aligned_with_the_image(cfg, min_iou):
    image, mask = _square()
    for seed in range(20):
        out_image, out_mask = augment(np.random.default_rng(seed), image, mask, cfg=cfg)
        drawn = out_image.mean(axis=2) > 128
        assert out_mask.sum() > 0.8 * mask.sum()
        assert _iou(drawn, out_mask > 0) > min_iou, seed


def test_zoom_and_stretch_move_the_mask_with_the_image_and_are_off_by_default():
    image, mask = _square(box=(20, 20, 44, 44))
    zoom_out = dataclasses.replace(GEOMETRY_ONLY, rotate_deg=(0, 0), mirror_p=0, flip_p=0, scale=(0.5, 0.5))
    out_image, out_mask = augment(np.random.default_rng(0), image, mask, cfg=zoom_out)
    assert abs(out_mask.sum() / mask.sum() - 0.25) < 0.05            # half the side: a quarter of the area
    assert _iou(out_image.mean(axis=2) > 128, out_mask > 0) > 0.9
    wide = dataclasses.replace(zoom_out, scale=(1.0, 1.0), stretch=2.0)
    ratios = []
    for seed in range(10):
        out_image, out_mask = augment(np.random.default_rng(seed), image, mask, cfg=wide)
        rows, cols = np.nonzero(out_mask)
        ratios.append((np.ptp(cols) + 1) / (np.ptp(rows) + 1))
        assert _iou(out_image.mean(axis=2) > 128, out_mask > 0) > 0.9
    assert all(1 / 2.2 < r < 2.2 for r in ratios) and max(ratios) > 1.3 and min(ratios) < 1 / 1.3
    # off (the default), they draw nothing: the recipe's random stream, and so every earlier run, is unchanged
    calls = {name: _draws(image, mask, cfg) for name, cfg in (
        ("default", AugmentConfig()), ("zoom", AugmentConfig(scale=(0.5, 1.0))), ("stretch", AugmentConfig(stretch=2)))}
    assert calls["zoom"] == calls["stretch"] == calls["default"] + 1


class _CountingRng:
    """A numpy Generator that counts the draws made from it."""

    def __init__(self, seed: int):
        self.rng, self.count = np.random.default_rng(seed), 0

    def __getattr__(self, name):
        method = getattr(self.rng, name)

        def counted(*args, **kwargs):
            self.count += 1
            return method(*args, **kwargs)
        return counted


def _draws(image, mask, cfg) -> int:
    rng = _CountingRng(3)
    augment(rng, image, mask, cfg=cfg)
    return rng.count


def test_colour_jitter_changes_colours_not_labels_and_is_off_by_default():
    rng = np.random.default_rng(0)
    image = rng.integers(60, 200, (48, 48, 3), dtype=np.uint8)
    mask = (rng.random((48, 48)) > 0.5).astype(np.uint8)
    still = dataclasses.replace(GEOMETRY_ONLY, rotate_deg=(0, 0), mirror_p=0, flip_p=0)
    for name, change in (("brightness", (1.3, 1.3)), ("contrast", (0.5, 0.5)), ("saturation", (0.0, 0.0)),
                         ("hue_deg", (90.0, 90.0))):
        out, out_mask = augment(np.random.default_rng(1), image, mask, cfg=dataclasses.replace(still, **{name: change}))
        np.testing.assert_array_equal(out_mask, mask)
        assert np.abs(out.astype(int) - image).mean() > 5, name
    grey, _ = augment(np.random.default_rng(1), image, None, cfg=dataclasses.replace(still, saturation=(0.0, 0.0)))
    assert np.abs(grey.astype(int) - grey.mean(axis=2, keepdims=True)).max() <= 1      # no colour left
    jitter = dataclasses.replace(AugmentConfig(), brightness=(0.9, 1.1), contrast=(0.9, 1.1), saturation=(0.9, 1.1),
                                 hue_deg=(-5, 5))
    assert _draws(image, mask, jitter) == _draws(image, mask, AugmentConfig()) + 4   # none when off: runs unchanged
    # the strong recipe for weak maps keeps the labels on the lesion like the others
    square, square_mask = _square()
    for seed in range(10):
        out, out_mask = augment(np.random.default_rng(seed), square, square_mask, cfg=WEAK_MAP_AUGMENT)
        assert out_mask.any() and _iou(out.mean(axis=2) > 100, out_mask > 0) > 0.6, seed


def test_augment_without_mask_and_input_checks():
    image, _ = _square()
    out, mask = augment(np.random.default_rng(0), image)
    assert mask is None and out.shape == image.shape
    with pytest.raises(ValueError, match="uint8"):
        augment(np.random.default_rng(0), image.astype(np.float32))
    with pytest.raises(ValueError, match="does not match"):
        augment(np.random.default_rng(0), image, np.zeros((10, 10), np.uint8))


def test_normalize_round_trip():
    image = np.random.default_rng(0).integers(0, 256, (8, 9, 3), dtype=np.uint8)
    x = normalize(image)
    assert x.dtype == np.float32
    np.testing.assert_array_equal(denormalize(x), image)
    mean = np.array([0.6681, 0.5301, 0.5247]) * 255
    np.testing.assert_allclose(normalize(np.broadcast_to(np.round(mean).astype(np.uint8), (1, 1, 3))), 0, atol=0.02)


# ------------------------------------------------------------------------------------------------ class mapping

def _row(**kw):
    row = {f"diagnosis_{i}": None for i in range(1, 6)}
    row.update(kw)
    return row


def test_class_mapping_first_match_fallback_and_unlabelled():
    mapping = ClassMapping.from_table(ISIC_CLASS_TABLE)
    assert mapping.classes == ("melanoma", "nevus", "seborrheic_keratosis", "other")
    assert mapping.label(_row(diagnosis_1="Malignant", diagnosis_3="Melanoma Invasive")) == 0
    assert mapping.label(_row(diagnosis_3="melanoma in situ")) == 0  # case-insensitive
    assert mapping.label(_row(diagnosis_3="Nevus")) == 1
    assert mapping.label(_row(diagnosis_3="Seborrheic keratosis")) == 2
    assert mapping.label(_row(diagnosis_1="Malignant", diagnosis_3="Basal cell carcinoma")) == 3
    assert mapping.label(_row(diagnosis_1="Benign")) == 3
    assert mapping.label(_row()) is None
    assert mapping.label(_row(diagnosis_1=float("nan"), diagnosis_2=pd.NA, diagnosis_3="")) is None
    assert ClassMapping.from_table(mapping.to_table()) == mapping


def test_class_mapping_rules():
    table = {"mel": ["diagnosis_2:*Melanoma*", "Lentigo maligna*"], "benign": "diagnosis_1:Benign"}
    mapping = ClassMapping.from_table(table)
    assert mapping.fallback is None
    assert mapping.label(_row(diagnosis_2="Malignant melanocytic proliferations (Melanoma)")) == 0
    assert mapping.label(_row(diagnosis_4="Lentigo maligna melanoma")) == 0  # bare glob: any diagnosis field
    assert mapping.label(_row(diagnosis_1="Benign", diagnosis_4="Lentigo maligna")) == 0  # first match wins
    assert mapping.label(_row(diagnosis_1="Benign")) == 1
    assert mapping.label(_row(diagnosis_1="Malignant")) is None  # no rule, no fallback
    with pytest.raises(ValueError, match="only one class"):
        ClassMapping.from_table({"a": "*", "b": "*"})
    with pytest.raises(ValueError, match="empty"):
        ClassMapping.from_table({})
    with pytest.raises(ValueError, match="pattern"):
        ClassMapping.from_table({"a": 3})


# ------------------------------------------------------------------------------------------------ datasets

def _write_classification_data(root, n=16, size=48):
    """Class 0: dark images, class 1: bright ones, plus two unlabelled rows; PNG files of varied sizes."""
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n + 2):
        label = i % 2
        h, w = size + 8 * (i % 3), size
        level = 60 if label == 0 else 190
        pixels = np.clip(level + rng.integers(-30, 31, (h, w, 3)), 0, 255).astype(np.uint8)
        file = f"images/ISIC_{i:07d}.png"
        Image.fromarray(pixels).save(root / file)
        dx3 = ("Melanoma Invasive", "Nevus")[label] if i < n else None
        rows.append(_row(isic_id=f"ISIC_{i:07d}", file=file, diagnosis_3=dx3))
    return pd.DataFrame(rows)


def _write_segmentation_data(root, n=16, size=64):
    """Dark discs on skin, masks 0/255; image sizes vary and are not square."""
    (root / "images").mkdir(parents=True)
    (root / "masks" / "test").mkdir(parents=True)
    rng = np.random.default_rng(1)
    manifest, gt = [], []
    for i in range(n):
        h, w = size + 16 * (i % 2), size
        yy, xx = np.mgrid[:h, :w]
        cy, cx, r = rng.uniform(0.35, 0.65) * h, rng.uniform(0.35, 0.65) * w, rng.uniform(0.15, 0.3) * w
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
        pixels = np.where(disc[..., None], (70, 40, 30), (220, 170, 150)).astype(np.uint8)
        isic_id = f"ISIC_{i:07d}"
        Image.fromarray(pixels).save(root / f"images/{isic_id}.png")
        Image.fromarray((disc * 255).astype(np.uint8)).save(root / f"masks/test/{isic_id}_segmentation.png")
        manifest.append({"isic_id": isic_id, "file": f"images/{isic_id}.png"})
        gt.append({"isic_id": isic_id, "challenge": "test", "split": "train" if i < n - 2 else "val",
                   "mask_file": f"masks/test/{isic_id}_segmentation.png"})
    return pd.DataFrame(manifest), pd.DataFrame(gt)


@pytest.fixture(scope="module")
def cls_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cls")
    return root, _write_classification_data(root)


@pytest.fixture(scope="module")
def seg_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg")
    manifest, gt = _write_segmentation_data(root)
    return root, segmentation_rows(manifest, gt, splits=["train"])


def test_classifier_dataset(cls_data):
    root, rows = cls_data
    mapping = ClassMapping.from_table(ISIC_CLASS_TABLE)
    ds = ClassifierDataset(root, rows, size=32, mapping=mapping, augment=True, seed=3)
    assert len(ds) == 16  # the two unlabelled rows are left out
    assert ds.class_counts().tolist() == [8, 8, 0, 0]
    x, y = ds[1]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64 and int(y) == 1
    torch.testing.assert_close(ds[1][0], x)  # same (seed, epoch, index): same item
    ds.set_epoch(1)
    assert not torch.equal(ds[1][0], x)
    plain = ClassifierDataset(root, rows.to_dict("records"), size=32, mapping=mapping)
    assert float(plain[0][0].mean()) < float(plain[1][0].mean())  # dark class 0, bright class 1


def test_segmentation_dataset_reads_early_epochs_at_the_early_size(seg_data):
    root, rows = seg_data
    ds = SegmentationDataset(root, rows, size=64, augment=True, seed=0, early_size=32, early_epochs=2)
    sides = []
    for epoch in range(3):
        ds.set_epoch(epoch)
        x, mask = ds[0]
        assert x.shape[1:] == mask.shape[1:]
        sides.append(x.shape[-1])
    assert sides == [32, 32, 64]
    ds.set_epoch(0)
    assert ds.size == 32


def test_datasets_show_networks_the_preprocessing_generate_applies(seg_data, cls_data):
    from wsm.models.inputs import to_batch
    from wsm.io.images import read_image
    from wsm.stages.preprocess import PreprocessConfig, preprocess

    root, rows = seg_data
    balanced = PreprocessConfig(working_size=48, vignette=False, colour_constancy=True)
    ds = SegmentationDataset(root, rows, size=32, pixels=balanced)
    raw = SegmentationDataset(root, rows, size=32)
    expected = to_batch([preprocess(read_image(root / rows["file"].iloc[0]), balanced).image], 32, "cpu")[0]
    torch.testing.assert_close(ds[0][0], expected)               # what generate's prior sees, exactly
    assert not torch.allclose(ds[0][0], raw[0][0], atol=0.05)   # the skin's pink cast is balanced away
    torch.testing.assert_close(ds[0][1], raw[0][1])               # the mask is untouched
    croot, crows = cls_data
    mapping = ClassMapping.from_table(ISIC_CLASS_TABLE)
    cls = ClassifierDataset(croot, crows, size=32, mapping=mapping, pixels=balanced)
    expected = to_batch([preprocess(read_image(croot / cls.files[0]), balanced).image], 32, "cpu")[0]
    torch.testing.assert_close(cls[0][0], expected)


def test_segmentation_dataset_keeps_masks_aligned(seg_data):
    root, rows = seg_data
    assert len(rows) == 14 and {"file", "mask_file"} <= set(rows.columns)
    ds = SegmentationDataset(root, rows, size=64, augment=True, seed=0)
    for epoch in range(3):
        ds.set_epoch(epoch)
        for i in range(4):
            x, mask = ds[i]
            assert x.shape == (3, 64, 64) and mask.shape == (1, 64, 64) and mask.dtype == torch.float32
            assert set(mask.unique().tolist()) <= {0.0, 1.0}
            dark = denormalize(x.permute(1, 2, 0).numpy()).mean(axis=2) < 120  # the disc (and rotated-out corners)
            lesion = mask[0].numpy() > 0
            assert (dark & lesion).sum() > 0.85 * lesion.sum()
    with pytest.raises(ValueError, match="mask_file"):
        SegmentationDataset(root, [{"isic_id": "ISIC_0000000", "file": "images/ISIC_0000000.png"}], size=64)


# ------------------------------------------------------------------------------------------------ training

def test_class_weights():
    w = class_weights([30, 10, 0, 20])
    torch.testing.assert_close(w, torch.tensor([60 / 90, 60 / 30, 0.0, 60 / 60]))
    loss = classification_loss([30, 10, 0, 20])
    assert isinstance(loss, torch.nn.CrossEntropyLoss) and loss.weight.shape == (4,)


def _classifier_setup(cls_data):
    root, rows = cls_data
    mapping = ClassMapping.from_table({"dark": "diagnosis_3:Melanoma*", "bright": "diagnosis_3:Nevus*"})
    dataset = ClassifierDataset(root, rows, size=32, mapping=mapping, augment=True, seed=0)
    torch.manual_seed(0)
    model = create_classifier("test_resnet", num_classes=2)
    return model, dataset, classification_loss(dataset.class_counts())


CFG = TrainConfig(epochs=2, batch_size=4, lr=3e-3, weight_decay=1e-4, seed=0)


def test_classifier_loss_goes_down(cls_data, tmp_path):
    model, dataset, loss_fn = _classifier_setup(cls_data)
    result = train(model, dataset, loss_fn, CFG, tmp_path, progress=False)
    assert len(result.epoch_losses) == 2 and result.resumed_from == 0
    assert result.epoch_losses[1] < 0.8 * result.epoch_losses[0]
    assert result.weights.exists() and result.checkpoint.exists() and (tmp_path / "train_config.json").exists()


def test_segmenter_loss_goes_down(seg_data, tmp_path):
    root, rows = seg_data
    dataset = SegmentationDataset(root, rows, size=64, augment=False, seed=0)
    torch.manual_seed(0)
    model = create_segmenter("unet", "test_resnet")
    result = train(model, dataset, BCEDice(), dataclasses.replace(CFG, lr=1e-2), tmp_path, progress=False)
    assert result.epoch_losses[1] < result.epoch_losses[0]


def test_learning_rate_warms_up_linearly_then_decays_by_cosine_to_zero():
    total = 100
    assert [lr_factor(s, total) for s in (0, 50, 100)] == pytest.approx([1.0, 0.5, 0.0])   # no warm-up
    warm = [lr_factor(s, total, warmup_fraction=0.1) for s in range(total + 1)]
    assert warm[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])   # 0.1 ... 1.0 over the first 10 steps
    assert warm[10] == 1.0 and warm[55] == pytest.approx(0.5) and warm[total] == pytest.approx(0.0)
    assert all(a >= b for a, b in zip(warm[9:], warm[10:]))
    with pytest.raises(ValueError, match="warmup_fraction"):
        TrainConfig(warmup_fraction=1.0)
    with pytest.raises(ValueError, match="encoder_lr_scale"):
        TrainConfig(encoder_lr_scale=0)


def test_encoder_learns_at_its_own_rate_and_every_parameter_is_in_one_group():
    torch.manual_seed(0)
    model = create_segmenter("unet", "test_resnet")
    groups = _param_groups(model, weight_decay=1e-4, lr=1e-3, encoder_lr_scale=0.1)
    rate = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert len(rate) == sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    for name, p in model.named_parameters():
        assert rate[id(p)] == pytest.approx(1e-4 if name.startswith("encoder.") else 1e-3), name
    assert {g["weight_decay"] for g in groups if all(p.ndim <= 1 for p in g["params"])} == {0.0}
    # at scale 1 the groups are the two of weight decay, as before the scale existed (old checkpoints resume)
    assert [g["weight_decay"] for g in _param_groups(model, 1e-4, 1e-3)] == [1e-4, 0.0]


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(cls_data, tmp_path):
    model, dataset, loss_fn = _classifier_setup(cls_data)
    full = train(model, dataset, loss_fn, CFG, tmp_path / "full", progress=False)
    expected = _state(model)

    # interrupted: the first step of epoch 2 fails, after the epoch-1 checkpoint was written
    model, dataset, loss_fn = _classifier_setup(cls_data)
    calls = {"n": 0}

    def crashing(outputs, targets):
        calls["n"] += 1
        if calls["n"] == len(dataset) // CFG.batch_size + 1:
            raise KeyboardInterrupt
        return loss_fn(outputs, targets)

    with pytest.raises(KeyboardInterrupt):
        train(model, dataset, crashing, CFG, tmp_path / "resumed", progress=False)
    assert not (tmp_path / "resumed" / "model.safetensors").exists()

    model, dataset, loss_fn = _classifier_setup(cls_data)
    torch.manual_seed(123)  # the checkpoint's RNG state must win over whatever the caller did
    resumed = train(model, dataset, loss_fn, CFG, tmp_path / "resumed", progress=False)
    assert resumed.resumed_from == 1
    assert resumed.epoch_losses == full.epoch_losses
    for key, value in expected.items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0, msg=key)

    # a finished run only gives its weights back; other settings refuse to resume
    again = train(model, dataset, loss_fn, CFG, tmp_path / "resumed", progress=False)
    assert again.resumed_from == 2 and again.epoch_losses == full.epoch_losses
    checkpoint = tmp_path / "resumed" / "checkpoint.pt"   # one written before the warm-up and encoder-rate keys
    state = torch.load(checkpoint, weights_only=True)
    del state["config"]["warmup_fraction"], state["config"]["encoder_lr_scale"]
    torch.save(state, checkpoint)
    assert train(model, dataset, loss_fn, CFG, tmp_path / "resumed", progress=False).resumed_from == 2
    with pytest.raises(ValueError, match="other settings"):
        train(model, dataset, loss_fn, dataclasses.replace(CFG, lr=1e-2), tmp_path / "resumed", progress=False)
    with pytest.raises(ValueError, match="other settings"):
        train(model, dataset, loss_fn, dataclasses.replace(CFG, warmup_fraction=0.1), tmp_path / "resumed",
              progress=False)


def test_training_is_deterministic_and_worker_processes_agree(cls_data, tmp_path):
    model, dataset, loss_fn = _classifier_setup(cls_data)
    one = train(model, dataset, loss_fn, dataclasses.replace(CFG, epochs=1), tmp_path / "a", progress=False)
    first = _state(model)
    model, dataset, loss_fn = _classifier_setup(cls_data)
    two = train(model, dataset, loss_fn, dataclasses.replace(CFG, epochs=1, num_workers=1), tmp_path / "b",
                progress=False)
    assert one.epoch_losses == two.epoch_losses
    for key, value in first.items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0, msg=key)


def test_safetensors_round_trip(tmp_path):
    torch.manual_seed(0)
    model = create_segmenter("unet", "test_resnet")
    path = save_weights(model, tmp_path / "w" / "model.safetensors", metadata={"classes": "lesion"})
    torch.manual_seed(1)
    other = create_segmenter("unet", "test_resnet")
    assert load_weights(other, path) == {"classes": "lesion"}
    for key, value in model.state_dict().items():
        torch.testing.assert_close(other.state_dict()[key], value, rtol=0, atol=0)
    assert [p.name for p in path.parent.iterdir()] == ["model.safetensors"]  # no temporary left behind
    with pytest.raises(FileNotFoundError):
        load_weights(other, tmp_path / "missing.safetensors")
