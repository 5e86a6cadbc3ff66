"""Networks: classifiers and their class activation maps (localise), segmentation networks (prior, `wsm train`),
the box-prompted LiteMedSAM (medsam), a file's road to a network's input (inputs) and the description a saved
network carries in its weights file (card: architecture, encoder, classes, channels, input size, mean and std).

Submodules import timm / pytorch-grad-cam (seconds), so names are loaded on first use::

    from wsm.models import create_classifier, cam_maps, create_segmenter
"""
from __future__ import annotations

from wsm._lazy import lazy_exports

_EXPORTS = {
    "CLASSIFIERS": "classifier",
    "DEFAULT_CPU_CLASSIFIER": "classifier",
    "DEFAULT_GPU_CLASSIFIER": "classifier",
    "PretrainedUnavailableError": "weights",
    "create_pretrained": "weights",
    "weight_source": "weights",
    "create_classifier": "classifier",
    "expand_first_conv_to_4ch": "classifier",
    "target_layer": "classifier",
    "CAM_METHODS": "cam",
    "cam_maps": "cam",
    "create_cam": "cam",
    "ARCHITECTURES": "segmentation",
    "CONVMIXER_ENCODERS": "convmixer",
    "SEGNET_ENCODERS": "segnet",
    "create_segmenter": "segmentation",
    "pad_to_multiple": "segmentation",
    "predict_prob": "segmentation",
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
