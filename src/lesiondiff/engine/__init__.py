"""Trainer, Predictor and Evaluator: the three phases, joined only by files on disk."""
