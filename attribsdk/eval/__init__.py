"""Evaluation: datasets with gold feature labels and the metrics that score attributions."""
