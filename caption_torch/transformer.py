"""cs231n's Transformer_Captioning names, for notebook users: ``from caption_torch.transformer import ...``.

The layers live in :mod:`caption_torch.models.transformer_layers` and the captioner in
:mod:`caption_torch.models.transformer`; this module only gives them the assignment's import path. The names
are exactly :mod:`caption_torch.models.transformer`'s ``__all__``, so the list is kept in one place.
"""

from caption_torch.models import transformer as _transformer
from caption_torch.models.transformer import *  # noqa: F403 -- the names of _transformer.__all__

__all__ = list(_transformer.__all__)
