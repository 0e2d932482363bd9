"""The rendering layer: numbers in, text and pixels out. Text tables, figures (the only home of matplotlib) and
map panels, below the engine, which writes through them; nothing here imports the engine or anything above it
(tests/test_layers.py holds the rule)."""
