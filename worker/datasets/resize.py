"""DIGITS's image resize geometry; the rules live in shared.images, shared with classify."""

from __future__ import annotations

from shared.images import NOISE_MODES, RESIZE_MODES, convert_channels
from shared.images import resize as resize_image

__all__ = ["NOISE_MODES", "RESIZE_MODES", "convert_channels", "resize_image"]
