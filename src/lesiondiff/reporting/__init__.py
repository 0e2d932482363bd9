"""Figures and reports: the one home of matplotlib in the package. ``figures``: the Agg plumbing, atomic PNG
writes and the reliability diagram; ``maps``: the overlay and uncertainty-map pictures ``predict`` writes per
image; ``run_figures``: training curves, prediction examples and sampling rounds; ``report``: the
self-contained HTML report; ``fingerprint_figures``, ``sampler_figures`` and ``gradcam_figures``: the figures
of those analyses.
Drawing modules take numbers (or the analyses' result objects, by their attributes) and import nothing from
``analysis``, which calls them."""
