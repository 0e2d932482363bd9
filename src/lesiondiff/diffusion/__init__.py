"""Noise schedules, training objectives and samplers."""
