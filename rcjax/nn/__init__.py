"""Flax building blocks that create RC leaves."""

from rcjax.nn.layers import MLP, Conv, Dense, rc_param

__all__ = ["Conv", "Dense", "MLP", "rc_param"]
