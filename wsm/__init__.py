"""wsm: weak segmentation maps for the ISIC archive."""
__version__ = "0.1.0"
