"""Train a captioning decoder: ``python train.py --help`` (the same as the ``caption-train`` command).

The trainer lives in :mod:`caption_torch.cli.train`; this file lets a checkout run it without installing.
"""

import sys

from caption_torch.cli.train import CaptionDataModule, build_parser, find_last_checkpoint, main, resolve_defaults

__all__ = ["CaptionDataModule", "build_parser", "find_last_checkpoint", "main", "resolve_defaults"]

if __name__ == "__main__":
    sys.exit(main())
