"""caption-torch: cs231n's image captioners (RNN, LSTM, Transformer) with hand-written autograd Functions."""

from .model import CaptioningRNN
from .transformer import CaptioningTransformer

__all__ = ["CaptioningRNN", "CaptioningTransformer"]
__version__ = "0.1.0"
