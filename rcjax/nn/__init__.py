"""Flax building blocks that create RC leaves."""

from rcjax.nn.bert import Bert
from rcjax.nn.gpt import GPT
from rcjax.nn.layers import MLP, Conv, Dense, rc_param

__all__ = ["Bert", "Conv", "Dense", "GPT", "MLP", "rc_param"]
