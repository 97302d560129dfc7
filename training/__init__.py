"""Synthetic marketplace, the two-tower and ranking models, training and export."""
