"""Layers: stable skew-symmetric ODE blocks (SONet eq. 3), the plain neural ODE
block, channel-copy, and the ODE block base class."""

from .activations import ACTIVATIONS, get_activation
from .channel_copy import ChannelCopy, channel_copy
from .neural_ode import ConcatConv2d, NeuralODEBlock, NeuralODEField
from .ode_block import ODEBlock
from .reference import set_reference_fields
from .skew import SkewConvField, SkewConvODE, SkewLinearField, SkewLinearODE, group_norm

__all__ = [
    "ACTIVATIONS",
    "ChannelCopy",
    "ConcatConv2d",
    "NeuralODEBlock",
    "NeuralODEField",
    "ODEBlock",
    "SkewConvField",
    "SkewConvODE",
    "SkewLinearField",
    "SkewLinearODE",
    "channel_copy",
    "get_activation",
    "group_norm",
    "set_reference_fields",
]
