"""Pipelines: TOML files and ``--set`` overrides (:mod:`~wsm.config.pipeline`) resolved into one typed recipe
of frozen stage configs (:mod:`~wsm.config.recipe`)."""
