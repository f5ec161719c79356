"""Caption a split with a trained checkpoint and score it as the COCO caption evaluation does.

    python -m caption_torch.evaluate --ckpt lightning_logs/version_0/checkpoints/last.ckpt
    python -m caption_torch.evaluate --help

The command's steps live in :mod:`caption_torch.cli.evaluate`; this module is its entry point
and keeps its names importable (``from caption_torch import evaluate; evaluate.main([...])``).
"""

from __future__ import annotations

import sys

from caption_torch.cli.evaluate import (  # noqa: F401 (the command's parts, importable from here as before)
    Run,
    build_parser,
    caption_split,
    describe_run,
    main,
    print_table,
    runs_from_args,
)
from caption_torch.training.checkpointing import (  # noqa: F401 (re-exported)
    CheckpointError,
    check_model_fits_data,
    load_model,
    load_system,
)

if __name__ == "__main__":
    sys.exit(main())
