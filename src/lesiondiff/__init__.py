"""lesiondiff: diffusion-model segmentation of lesions in 2D medical images."""

__version__ = "0.1.0"
