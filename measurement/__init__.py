"""Measurement: latency meters and lookup tables, accuracy with BN recalibration, training and fine-tuning."""
