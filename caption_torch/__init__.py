"""caption-torch: cs231n's image-captioning RNN/LSTM with hand-written autograd Functions."""

from .model import CaptioningRNN

__all__ = ["CaptioningRNN"]
__version__ = "0.1.0"
