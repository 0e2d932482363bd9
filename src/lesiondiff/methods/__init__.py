"""Each published method's own training and inference pieces, one file per method, registered under the names
the presets use: a loss in ``OBJECTIVES``, a sampler in ``SAMPLERS``, a pre-trained part in ``PRETRAINING``, a
curriculum in ``CURRICULA``. A method reads from three places: its network (``models/<name>.py``), this package's
``<name>.py`` (whose docstring lists the rest: data steps, fusion, presets) and its preset
(``presets/<name>.yaml``).

The "Analysing Diffusion Segmentation" study needs no pieces of its own here: EnsemDiff, SegDiff and MedSegDiff
(``models/``, ``presets/``) train with the generic eps objective (``diffusion/objectives.py``) or feed-forward
(``diffusion.mode: feedforward``, whose rule ``build.py`` applies); its comparison is ``experiments/compare.py``,
its timestep fingerprints ``analysis/fingerprint.py`` with ``diffusion/recoverability.py`` and the fingerprint
timestep sampler ``diffusion/timesteps.py``, its ECE ``metrics.py``.

Importing this package registers every method's parts; ``lesiondiff.build`` does so before building anything.
"""

from . import diffseg, palscdiff, pgdiffseg, refiner, unisegdiff  # noqa: F401  (registration)
