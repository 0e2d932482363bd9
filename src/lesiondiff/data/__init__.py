"""Data: reading images and masks, indexing dataset layouts, manifests and splits."""
