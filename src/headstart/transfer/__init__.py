"""Hand-off between stages: export a pretrained backbone, load it into a downstream model with a report."""
