"""cam_maps: output contract, flip TTA, class choice, hooks released, caller's context and model state untouched."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from wsm.models.cam import CAM_METHODS, cam_maps, create_cam  # noqa: E402
from wsm.models.classifier import create_classifier, target_layer  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_classifier("test_resnet", num_classes=4)


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(1)
    return torch.randn(3, 3, 64, 64)


def _hooks(module: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._backward_hooks) for m in module.modules())


def test_unknown_method_lists_the_valid_ones(model):
    with pytest.raises(ValueError) as err:
        create_cam("gradcam+++", model, target_layer(model))
    assert all(name in str(err.value) for name in CAM_METHODS)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "layercam", "xgradcam", "eigencam"])
def test_output_contract(model, images, method):
    maps = cam_maps(model, images, method=method)
    assert maps.shape == (3, 64, 64) and maps.dtype == np.float32
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    single = cam_maps(model, images, method=method, flip_tta=False)
    assert single.shape == (3, 64, 64) and single.dtype == np.float32
    for m in single:  # one view: min-max scaled
        assert m.min() == 0.0 and (m.max() == pytest.approx(1.0, abs=1e-6) or m.max() == 0.0)


def test_scorecam_runs(model, images):
    maps = cam_maps(model, images[:1], method="scorecam", flip_tta=False)
    assert maps.shape == (1, 64, 64) and 0.0 <= maps.min() <= maps.max() <= 1.0


def test_flip_tta_gives_a_symmetric_map_for_a_symmetric_image(model, images):
    x = images[:2]
    x = x + x.flip(3)
    x = x + x.flip(2)  # symmetric under both flips
    maps = cam_maps(model, x, method="gradcam++", flip_tta=True)
    np.testing.assert_allclose(maps, maps[:, :, ::-1], atol=1e-5)
    np.testing.assert_allclose(maps, maps[:, ::-1, :], atol=1e-5)
    plain = cam_maps(model, x, method="gradcam++", flip_tta=False)
    assert not np.allclose(plain, plain[:, :, ::-1], atol=1e-3)  # the network alone is not symmetric


def test_flip_tta_is_equivariant(model, images):
    maps = cam_maps(model, images, method="gradcam")
    flipped = cam_maps(model, images.flip(3), method="gradcam")
    np.testing.assert_allclose(flipped, maps[:, :, ::-1], atol=1e-5)


def test_default_class_is_the_top_class(model, images):
    with torch.no_grad():
        top = model.eval()(images).argmax(1).tolist()
    np.testing.assert_allclose(cam_maps(model, images, method="gradcam", target_classes=top),
                               cam_maps(model, images, method="gradcam"))
    other = [(c + 1) % 4 for c in top]
    assert not np.allclose(cam_maps(model, images, method="gradcam", target_classes=other),
                           cam_maps(model, images, method="gradcam"))


def test_batch_items_are_independent(model, images):
    together = cam_maps(model, images, method="gradcam++")
    alone = np.stack([cam_maps(model, images[i:i + 1], method="gradcam++")[0] for i in range(len(images))])
    np.testing.assert_allclose(together, alone, atol=1e-4)


def test_bad_target_classes(model, images):
    with pytest.raises(ValueError, match="one class per image"):
        cam_maps(model, images, target_classes=[0])
    with pytest.raises(ValueError, match="out of range"):
        cam_maps(model, images, target_classes=[0, 1, 7])


def test_hooks_released_and_model_state_restored(model, images):
    model.train()
    before = _hooks(model)
    cam_maps(model, images, method="gradcam++")
    assert _hooks(model) == before == 0
    assert model.training
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


def test_hooks_released_and_error_propagates_on_failure(images):
    model = create_classifier("test_resnet", num_classes=4)

    class Broken(torch.nn.Module):
        def forward(self, x):
            raise IndexError("broken head")  # pytorch-grad-cam's __exit__ would swallow an IndexError

    model.fc = Broken()
    with pytest.raises(IndexError, match="broken head"):
        cam_maps(model, images, target_classes=[0, 0, 0])
    assert _hooks(model) == 0


def test_works_inside_inference_mode_and_no_grad(model, images):
    expected = cam_maps(model, images, method="gradcam")
    with torch.inference_mode():
        x = images.clone()  # an inference tensor
        np.testing.assert_allclose(cam_maps(model, x, method="gradcam"), expected, atol=1e-6)
    with torch.no_grad():
        np.testing.assert_allclose(cam_maps(model, images, method="gradcam"), expected, atol=1e-6)


def test_frozen_model(images):
    torch.manual_seed(0)
    model = create_classifier("test_resnet", num_classes=4).requires_grad_(False)
    maps = cam_maps(model, images, method="gradcam")
    assert maps.shape == (3, 64, 64) and maps.max() > 0
    assert not any(p.requires_grad for p in model.parameters())
    model.requires_grad_(True)
    np.testing.assert_allclose(cam_maps(model, images, method="gradcam"), maps, atol=1e-6)


def test_rejects_non_batched_input(model, images):
    with pytest.raises(ValueError, match="B, C, H, W"):
        cam_maps(model, images[0])
