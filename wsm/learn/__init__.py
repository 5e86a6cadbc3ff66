"""The learning engine that `wsm fit` (the classifier and the segmentation prior) and `wsm train` (the students)
share: datasets over DATA and WSM folders (:mod:`~wsm.learn.datasets`), augmentation (:mod:`~wsm.learn.augment`),
losses (:mod:`~wsm.learn.losses`) and the training loop with checkpoints and resume (:mod:`~wsm.learn.loop`).
Below the command folders: it imports none of them."""
