"""Neural network building blocks (no knowledge of models or inference)."""

from .dense import (
    NETWORKS,
    ConvDecoder,
    ConvEncoder,
    MLPDecoder,
    MLPEncoder,
    make_encoder_decoder,
    mlp,
)

__all__ = [
    "NETWORKS",
    "ConvDecoder",
    "ConvEncoder",
    "MLPDecoder",
    "MLPEncoder",
    "make_encoder_decoder",
    "mlp",
]
