"""cs231n's Transformer_Captioning names, for notebook users: ``from caption_torch.transformer import ...``.

The layers live in :mod:`caption_torch.models.transformer_layers` and the captioner in
:mod:`caption_torch.models.transformer`; this module only gives them the assignment's import path.
"""

from caption_torch.models.transformer import CaptioningTransformer
from caption_torch.models.transformer_layers import (
    MultiHeadAttention,
    PositionalEncoding,
    TransformerDecoder,
    TransformerDecoderLayer,
)

__all__ = [
    "CaptioningTransformer",
    "MultiHeadAttention",
    "PositionalEncoding",
    "TransformerDecoderLayer",
    "TransformerDecoder",
]
