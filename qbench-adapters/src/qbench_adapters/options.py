"""Option schemas shared by this package's datasets (no heavy imports: schema building must
not import torch)."""

from __future__ import annotations

from typing import Any

#: Options every dataset of this package understands besides core's name/batch_size/limit.
COMMON_PROPERTIES: dict[str, Any] = {
    "skip_corrupt": {
        "type": "boolean",
        "default": False,
        "description": "skip (and count) unreadable image files instead of stopping",
    },
    "num_workers": {
        "type": "integer",
        "minimum": 0,
        "default": 0,
        "description": "worker processes decoding images (0: in the main process)",
    },
}
