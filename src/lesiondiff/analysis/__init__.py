"""Analyses of trained runs and data sets: timestep fingerprints (``fingerprint``)."""
