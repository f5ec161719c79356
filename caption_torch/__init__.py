"""caption-torch: cs231n's image captioners (RNN, LSTM, Transformer) with hand-written autograd Functions."""

from caption_torch.models.recurrent import CaptioningRNN
from caption_torch.models.transformer import CaptioningTransformer

__all__ = ["CaptioningRNN", "CaptioningTransformer"]
__version__ = "0.1.0"
