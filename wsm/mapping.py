"""From an image to its ISIC_WSM label map: the model evidence (batched) and the per-image CPU stages.

`MapModels.evidence` runs the networks on a batch (the GPU part); `label_image` is a pure function of one
preprocessed image and its evidence maps (the CPU part: fusion, dense CRF, morphology, decision), run in worker
processes by `generate` and by `fit`'s calibration.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import numpy as np

from wsm.config.pipeline import PipelineError
from wsm.config.recipe import Recipe
from wsm.models.inputs import preprocessed_file, to_batch
from wsm.stages.box_prompt import lesion_box, mix, own_box
from wsm.stages.cascade import crop, crop_region, detail_image, view_of_crop
from wsm.stages.classic import lesion_prob_classic
from wsm.stages.preprocess import Preprocessed
from wsm.stages.quality import framing_failure, predicted_jaccard, quality_signals
from wsm.stages.refine import confidence, decide, fuse, refine, resize_prob


class Labelled(NamedTuple):
    label_map: np.ndarray    # uint8 (S, S) at the working size: 0 / 1 / 255
    prob: np.ndarray         # float32 (S, S): the fused probability the decision used
    confidence: float
    mask: np.ndarray         # bool (S, S): the refined lesion mask
    signals: dict | None     # wsm.stages.quality.quality_signals, when asked for or the recipe has a quality model
    predicted_jaccard: float | None   # the recipe's quality model on the signals (None without a model)


def fusion_weights(recipe: Recipe, names) -> dict[str, float]:
    """The recipe's weights for the maps present; a lone map gets weight 1."""
    names = list(names)
    if len(names) == 1:
        return {names[0]: 1.0}
    missing = [n for n in names if n not in recipe.fusion.weights]
    if missing:
        raise PipelineError(f"[fusion.weights] has no weight for {missing}; it has {dict(recipe.fusion.weights)}: "
                            "set one in the pipeline file and fit again")
    return {n: float(recipe.fusion.weights[n]) for n in names}


def weighted_maps(recipe: Recipe, names) -> list[str]:
    """The maps that count in the fusion: those of weight > 0 (all of them when none has, so that fusing fails
    with its clear error rather than here)."""
    weights = fusion_weights(recipe, names)
    return [n for n in names if weights[n] > 0] or list(names)


def cpu_evidence(pre: Preprocessed, recipe: Recipe) -> dict[str, np.ndarray]:
    """Evidence computed without a network (the classic colour threshold)."""
    if recipe.method == "classic":
        return {"classic": lesion_prob_classic(pre.image, pre.valid_mask, recipe.classic)}
    return {}


def label_image(pre: Preprocessed, maps: dict[str, np.ndarray], recipe: Recipe,
                with_signals: bool = False) -> Labelled:
    """Fuse, refine (CRF + morphology) and decide, at the working size; with the quality signals and the predicted
    Jaccard when the recipe has a quality model (or ``with_signals``). A map that fails the recipe's framing check
    is predicted 0, with or without a model (wsm.stages.quality)."""
    maps = {**maps, **cpu_evidence(pre, recipe)}
    prob = fuse(maps, fusion_weights(recipe, maps))
    refined = refine(pre.image, prob, pre.valid_mask, recipe.refine)
    label_map = decide(prob, refined.mask, pre.valid_mask, recipe.decision)
    signals = None
    if with_signals or recipe.quality.enabled:
        signals = quality_signals(pre.image, pre.valid_mask, prob, refined.mask, label_map, recipe.classic,
                                  pre.whole_view)
    predicted = predicted_jaccard(recipe.quality, signals) if signals is not None else None
    if framing_failure(refined.mask, pre.valid_mask, recipe.framing) is not None:
        predicted = 0.0
    return Labelled(label_map, prob, confidence(prob, label_map), refined.mask, signals, predicted)


@dataclass
class MapModels:
    """The trained networks of a bundle, ready to produce evidence maps for batches of images."""

    recipe: Recipe
    classifier: object | None = None      # torch.nn.Module
    prior: object | None = None           # torch.nn.Module
    device: str = "cpu"
    _box_segmenter: object | None = None  # wsm.models.medsam, loaded when an image's recipe first prompts it

    @property
    def box_segmenter(self):
        if self._box_segmenter is None:
            from wsm.models.medsam import load_box_segmenter

            self._box_segmenter = load_box_segmenter(self.device)
        return self._box_segmenter

    def evidence(self, images: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Per image: map name -> float32 (S, S) in [0, 1] at the working size of the (S, S, 3) uint8 inputs."""
        if not images:
            return []
        size = images[0].shape[0]
        out: list[dict[str, np.ndarray]] = [{} for _ in images]
        if self.classifier is not None:
            from wsm.models.cam import cam_maps

            batch = to_batch(images, self.recipe.classifier.size, self.device)
            cams = cam_maps(self.classifier, batch, method=self.recipe.cam.method, flip_tta=self.recipe.cam.flip_tta)
            for item, cam in zip(out, cams):
                item["cam"] = resize_prob(cam, (size, size))
        if self.prior is not None:
            import torch

            from wsm.models.segmentation import predict_prob

            # float16 on CUDA: the prior is a plain forward pass (the CAM needs float32 gradients, so it stays)
            with torch.autocast("cuda", dtype=torch.float16, enabled=self.device.startswith("cuda")):
                probs = predict_prob(self.prior, to_batch(images, self.recipe.prior.size, self.device),
                                     flip_tta=self.recipe.prior.flip_tta)
            for item, prob in zip(out, probs):
                item["prior"] = resize_prob(prob, (size, size))
        return out

    def cascaded_evidence(self, pres: list[Preprocessed],
                          recipes: list[Recipe]) -> tuple[list[Preprocessed], list[dict[str, np.ndarray]]]:
        """The evidence of a batch as each image's recipe makes it, with the images it is of: the networks' maps,
        cascaded and box-prompted where the recipe says so. An image whose recipe cascades and whose prior finds a
        lesion small in the image is replaced by the crop round its lesion (cut from its detail copy: an image
        without one stays whole), and the evidence is the crop's; the crop keeps the whole image's prior map of
        its region as a second view (for the quality signals). The images come back without their detail
        copies. Generate and fit both take this road, so that fit learns on the maps generate decides on (its
        calibration on the images whole, without detail copies; its quality model with the crops)."""
        maps = self.evidence([pre.image for pre in pres])
        pres = [self._cascade_crop(pre, evidence, recipe) for pre, evidence, recipe in zip(pres, maps, recipes)]
        crops = [i for i, pre in enumerate(pres) if pre.placement is not None]
        for i, evidence in zip(crops, self.evidence([pres[i].image for i in crops])):
            pres[i] = pres[i]._replace(whole_view=view_of_crop(maps[i]["prior"], pres[i]))
            maps[i] = evidence
        return [pre._replace(detail=None) for pre in pres], self.box_prompted(pres, maps, recipes)

    @staticmethod
    def _cascade_crop(pre: Preprocessed, evidence: dict[str, np.ndarray], recipe: Recipe) -> Preprocessed:
        """The crop round the image's lesion when its recipe cascades and the lesion is small; else the image."""
        if not (recipe.cascade.enabled and pre.detail is not None and "prior" in evidence):
            return pre
        region = crop_region(evidence["prior"], pre.valid_mask, recipe.cascade)
        cropped = None if region is None else crop(pre, region, recipe.preprocess)
        return pre if cropped is None else cropped

    def box_prompted(self, pres: list[Preprocessed], maps: list[dict[str, np.ndarray]],
                     recipes: list[Recipe]) -> list[dict[str, np.ndarray]]:
        """The evidence with each prior map whose recipe prompts the box segmenter replaced by the mix of the two
        (wsm.stages.box_prompt); a map where the prior finds no lesion stays as it is."""
        from wsm.models.medsam import box_prob

        out = [dict(m) for m in maps]
        for pre, evidence, recipe in zip(pres, out, recipes):
            config = recipe.box_prompt
            if not (config.enabled and "prior" in evidence):
                continue
            box = lesion_box(evidence["prior"], pre.valid_mask, recipe.refine.mask_threshold, config.margin)
            if box is not None:
                prob = box_prob(self.box_segmenter, pre.image, box, self.device, config.rounds,
                                partial(own_box, valid_mask=pre.valid_mask, config=config))
                evidence["prior"] = mix(evidence["prior"], prob, config.weight)
        return out


def prepare(path, cfg, max_pixels: int | None = None, detail_side: int = 0) -> Preprocessed:
    """Decode an image file and preprocess it (the I/O edge of the per-image work); with ``detail_side``, keep
    the image at up to that shorter side too, for the cascade to crop from."""
    from wsm.io.images import DEFAULT_MAX_PIXELS, image_size, read_image

    # the label map goes back to the file's true size, not to that of a JPEG decoded at a smaller scale
    pre = preprocessed_file(path, cfg, max_pixels)._replace(original_size=image_size(path))
    if not detail_side:
        return pre
    # decoded again, larger: the working image stays exactly what fit calibrated on
    rgb = read_image(path, max_pixels=max_pixels or DEFAULT_MAX_PIXELS, min_side=detail_side)
    return pre._replace(detail=detail_image(rgb, detail_side))
