"""Settings the tests share (``pythonpath = ["tests"]`` in pyproject.toml makes this importable)."""

# the smallest network of the U-Net family (8-channel base, two levels): what every test that trains or samples
# a real model builds, so that it runs in seconds on a CPU
TINY_MODEL = ["model.base_channels=8", "model.channel_mult=[1,2]", "model.attention_levels=[false,true]"]


def file_writer(threshold: float = 0.5, maps: str = "probabilities"):
    """What ``Predictor.write`` reads from ``self`` to write a Prediction's files, without a model: the sampling
    settings, no post-processing, and the two helpers it calls."""
    from types import SimpleNamespace

    from lesiondiff.engine.predict import Predictor

    writer = SimpleNamespace(cfg=SimpleNamespace(sample=SimpleNamespace(threshold=threshold, maps=maps)),
                             postprocess=None, declared_empty=0)
    writer.full_mask = lambda pred: Predictor.full_mask(writer, pred)
    writer.maps = lambda pred: Predictor.maps(writer, pred)
    return writer
