"""Settings the tests share (``pythonpath = ["tests"]`` in pyproject.toml makes this importable)."""

# the smallest network of the U-Net family (8-channel base, two levels): what every test that trains or samples
# a real model builds, so that it runs in seconds on a CPU
TINY_MODEL = ["model.base_channels=8", "model.channel_mult=[1,2]", "model.attention_levels=[false,true]"]
