"""Neural network building blocks (no knowledge of models or inference)."""

from .dense import (
    HIDDEN_LAYERS,
    NETWORKS,
    WEIGHT_INITS,
    ConvDecoder,
    ConvEncoder,
    GatedConv2d,
    GatedDense,
    HiddenLayer,
    MLPDecoder,
    MLPEncoder,
    WeightInit,
    he_normal_,
    make_encoder_decoder,
    mlp,
)
from .masked import MaskedConv2d
from .pixelcnn import GatedPixelCNNNet, PixelCNNNet, declare_wiring
from .pixelrnn import PixelRNNNet

__all__ = [
    "HIDDEN_LAYERS",
    "NETWORKS",
    "WEIGHT_INITS",
    "GatedConv2d",
    "GatedPixelCNNNet",
    "MaskedConv2d",
    "PixelCNNNet",
    "PixelRNNNet",
    "declare_wiring",
    "GatedDense",
    "HiddenLayer",
    "WeightInit",
    "he_normal_",
    "ConvDecoder",
    "ConvEncoder",
    "MLPDecoder",
    "MLPEncoder",
    "make_encoder_decoder",
    "mlp",
]
