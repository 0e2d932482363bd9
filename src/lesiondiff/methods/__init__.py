"""Each published method's own training and inference pieces, one file per method, registered under the names
the presets use: a loss in ``OBJECTIVES``, a sampler in ``SAMPLERS``, a pre-trained part in ``PRETRAINING``,
PalScDiff's curriculum. A method reads from three places: its network (``models/<name>.py``), this package's
``<name>.py`` (whose docstring lists the rest: data steps, fusion, presets) and its preset
(``presets/<name>.yaml``). EnsemDiff, SegDiff and MedSegDiff use only the generic pieces of ``diffusion/``.

Importing this package registers every method's parts; ``lesiondiff.build`` does so before building anything.
"""

from . import diffseg, palscdiff, pgdiffseg, pretrain, refiner, unisegdiff  # noqa: F401  (registration)
