"""Analyses of trained runs and data sets: timestep fingerprints (``fingerprint``), Dice against the number of
network evaluations per sampler (``sampler_sweep``), Grad-CAM along a sampling trajectory (``gradcam``)."""
