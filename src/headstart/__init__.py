"""headstart: pretrain with a self-supervised objective, hand off to a downstream task, measure the gain."""

__version__ = "0.1.0"
