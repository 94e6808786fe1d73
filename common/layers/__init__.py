"""Keras layers shared by the packages; importing this module registers them for model loading."""

from common.layers.attention_branch import AttentionBranch
from common.layers.locally_connected2d import LocallyConnected2D

__all__ = ["AttentionBranch", "LocallyConnected2D"]
