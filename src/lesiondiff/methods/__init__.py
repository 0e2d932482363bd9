"""Each published method's own training and inference pieces, one file per method, registered under the names
the presets use: a loss in ``OBJECTIVES``, a sampler in ``SAMPLERS``, a pre-trained part in ``PRETRAINING``, a
curriculum in ``CURRICULA``. A method reads from three places: its network (``models/<name>.py``), this package's
``<name>.py`` (whose docstring lists the rest: data steps, fusion, presets) and its preset
(``presets/<name>.yaml``).

The "Analysing Diffusion Segmentation" study's own pieces (its feed-forward rule and objective, the fingerprint
timestep sampler) are in ``analysing.py``, whose docstring says where the rest of the study lives.

Importing this package registers every method's parts; ``lesiondiff.build`` does so before building anything.
"""

from . import analysing, diffseg, palscdiff, pgdiffseg, refiner, unisegdiff  # noqa: F401  (registration)
