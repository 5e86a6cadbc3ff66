"""Pipeline stages: pure functions over numpy arrays, one frozen config dataclass each, no file I/O.

- :mod:`wsm.stages.preprocess`: working size, dermoscope frame, hair removal, colour constancy.
- :mod:`wsm.stages.refine`: fuse probability maps, dense CRF, morphology, decide 0 / 1 / 255, map back.
- :mod:`wsm.stages.classic`: the no-learning colour-threshold baseline.

The neural stages (classifier, CAM, segmentation prior) live beside these and produce the probability maps
that :func:`~wsm.stages.refine.fuse` combines.
"""
from wsm.stages.classic import (
    ClassicConfig,
    ClassicPipelineConfig,
    ClassicResult,
    lesion_prob_classic,
    segment_classic,
)
from wsm.stages.preprocess import (
    PreprocessConfig,
    Preprocessed,
    preprocess,
    remove_hair,
    shades_of_grey,
    to_working_size,
    vignette_mask,
)
from wsm.stages.refine import (
    LABEL_BACKGROUND,
    LABEL_LESION,
    LABEL_UNCERTAIN,
    CrfConfig,
    DecisionConfig,
    FusionConfig,
    MorphologyConfig,
    RefineConfig,
    Refined,
    clean_mask,
    confidence,
    decide,
    dense_crf,
    fuse,
    refine,
    to_original_size,
)

__all__ = [
    "LABEL_BACKGROUND",
    "LABEL_LESION",
    "LABEL_UNCERTAIN",
    "ClassicConfig",
    "ClassicPipelineConfig",
    "ClassicResult",
    "CrfConfig",
    "DecisionConfig",
    "FusionConfig",
    "MorphologyConfig",
    "PreprocessConfig",
    "Preprocessed",
    "RefineConfig",
    "Refined",
    "clean_mask",
    "confidence",
    "decide",
    "dense_crf",
    "fuse",
    "lesion_prob_classic",
    "preprocess",
    "refine",
    "remove_hair",
    "segment_classic",
    "shades_of_grey",
    "to_original_size",
    "to_working_size",
    "vignette_mask",
]
