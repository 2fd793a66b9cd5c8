"""Downstream task heads on a (pretrained or fresh) backbone."""
