"""Preprocessing and augmentation of uint8 NCHW batches on the device, with per-sample randomness.

Order (DIGITS's): scale to 0..1, HSV jitter (RGB only), subtract the mean, crop (random in
training, centre otherwise), flips, quarter rotations, one affine resample for rotation and
scale, gaussian noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from shared.schemas.jobs import Hyperparameters

# DIGITS's meanings of the quarter-rotation options: the multiples of 90 degrees drawn from.
QUAD_ROTATIONS: dict[str, tuple[int, ...]] = {
    "none": (0,),
    "rot90": (0, 1, 3),
    "rot180": (0, 2),
    "rotall": (0, 1, 2, 3),
}


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """N x 3 x H x W RGB in 0..1 to HSV in 0..1."""
    r, g, b = x.unbind(1)
    maxc, argmax = x.max(1)
    minc = x.min(1).values
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    s = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), 0.0)
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    h = torch.where(argmax == 0, bc - gc, torch.where(argmax == 1, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta > 0, torch.remainder(h / 6.0, 1.0), 0.0)
    return torch.stack([h, s, maxc], 1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """N x 3 x H x W HSV in 0..1 to RGB in 0..1."""
    h, s, v = x.unbind(1)
    h6 = torch.remainder(h, 1.0) * 6.0
    i = torch.floor(h6)
    f = h6 - i
    p = v * (1.0 - s)
    q = v * (1.0 - s * f)
    t = v * (1.0 - s * (1.0 - f))
    idx = i.long().clamp_(0, 5).unsqueeze(0)
    r = torch.stack([v, q, p, p, t, v]).gather(0, idx)[0]
    g = torch.stack([t, v, v, q, p, p]).gather(0, idx)[0]
    b = torch.stack([p, p, t, v, v, q]).gather(0, idx)[0]
    return torch.stack([r, g, b], 1)


def _uniform(n: int, gen: torch.Generator | None, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=gen, device=device)


def _normal(n: int, gen: torch.Generator | None, device: torch.device) -> torch.Tensor:
    return torch.randn(n, generator=gen, device=device)


def random_flip(x: torch.Tensor, mode: str, gen: torch.Generator | None) -> torch.Tensor:
    """Flip each sample left-right and/or up-down with probability 1/2 (DIGITS's aug_flip)."""
    n = x.shape[0]
    if mode in ("fliplr", "fliplrud"):
        m = _uniform(n, gen, x.device).lt(0.5).view(n, 1, 1, 1)
        x = torch.where(m, x.flip(3), x)
    if mode in ("flipud", "fliplrud"):
        m = _uniform(n, gen, x.device).lt(0.5).view(n, 1, 1, 1)
        x = torch.where(m, x.flip(2), x)
    return x


def random_quad_rotation(x: torch.Tensor, mode: str, gen: torch.Generator | None) -> torch.Tensor:
    """Rotate each (square) sample by a multiple of 90 degrees drawn from the mode's set."""
    choices = QUAD_ROTATIONS[mode]
    if len(choices) == 1:
        return x
    n = x.shape[0]
    pick = torch.randint(len(choices), (n,), generator=gen, device=x.device)
    k = torch.tensor(choices, device=x.device)[pick].view(n, 1, 1, 1)
    out = x
    for quarter in choices:
        if quarter:
            out = torch.where(k == quarter, torch.rot90(x, quarter, (2, 3)), out)
    return out


def random_affine(
    x: torch.Tensor, max_degrees: float, scale_std: float, gen: torch.Generator | None
) -> torch.Tensor:
    """Rotate by U(-max, max) degrees and scale by 1 + N(0, std) per sample, in one resample."""
    n, _, h, w = x.shape
    angle = (_uniform(n, gen, x.device) * 2.0 - 1.0) * math.radians(max_degrees)
    scale = (1.0 + _normal(n, gen, x.device) * scale_std).clamp_(0.25, 4.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    zero = torch.zeros_like(cos)
    # Rotation in pixel units, expressed in affine_grid's normalised coordinates.
    theta = torch.stack(
        [
            torch.stack([cos, -sin * (h / w), zero], 1),
            torch.stack([sin * (w / h), cos, zero], 1),
        ],
        1,
    )
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_hsv(
    x: torch.Tensor, hue: float, sat: float, val: float, gen: torch.Generator | None
) -> torch.Tensor:
    """Shift hue, saturation and value of each RGB sample by N(0, std) (0..1 scale)."""
    n = x.shape[0]
    shift = torch.randn(n, 3, generator=gen, device=x.device) * torch.tensor(
        [hue, sat, val], device=x.device
    )
    hsv = rgb_to_hsv(x) + shift.view(n, 3, 1, 1)
    h, s, v = hsv.unbind(1)
    hsv = torch.stack([torch.remainder(h, 1.0), s.clamp(0.0, 1.0), v.clamp(0.0, 1.0)], 1)
    return hsv_to_rgb(hsv)


def random_crop(x: torch.Tensor, size: int, gen: torch.Generator | None) -> torch.Tensor:
    """A size x size crop at a random place in each sample (one gather)."""
    n, c, h, w = x.shape
    if size == h and size == w:
        return x
    dev = x.device
    oy = torch.randint(h - size + 1, (n,), generator=gen, device=dev)
    ox = torch.randint(w - size + 1, (n,), generator=gen, device=dev)
    ar = torch.arange(size, device=dev)
    flat = ((oy[:, None] + ar)[:, :, None] * w + (ox[:, None] + ar)[:, None, :]).view(n, 1, -1)
    out = x.reshape(n, c, h * w).gather(2, flat.expand(n, c, size * size))
    return out.view(n, c, size, size)


def centre_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """The central size x size crop."""
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top : top + size, left : left + size]


@dataclass
class Preprocess:
    """Turns uint8 NCHW batches into the network's float input, augmenting in training."""

    hyper: Hyperparameters
    mean: torch.Tensor | None  # C x H x W (or C x 1 x 1) on the 0..255 scale, on the device
    channels: int
    height: int
    width: int
    channels_last: bool = False

    def __post_init__(self) -> None:
        hp = self.hyper
        self.crop = (
            hp.crop_size
            if hp.crop_size and (hp.crop_size < self.height or hp.crop_size < self.width)
            else None
        )
        self.hsv = (
            hp.aug_hsv_use
            and self.channels == 3
            and (hp.aug_hsv_h > 0 or hp.aug_hsv_s > 0 or hp.aug_hsv_v > 0)
        )
        self.affine = hp.aug_rot > 0 or hp.aug_scale > 0
        self.augments = (
            self.crop is not None
            or self.hsv
            or self.affine
            or hp.aug_flip != "none"
            or hp.aug_quad_rot != "none"
            or hp.aug_noise > 0
        )
        self.memory_format = torch.channels_last if self.channels_last else torch.contiguous_format

    @property
    def out_size(self) -> tuple[int, int]:
        """Height and width of the network's input."""
        return (self.crop, self.crop) if self.crop else (self.height, self.width)

    def _float(self, x: torch.Tensor) -> torch.Tensor:
        # An explicit format: size-1 dims make a streamed NHWC batch look channels_last, and the
        # CPU convolutions would then take another (numerically different) path.
        return x.to(torch.float32, memory_format=self.memory_format, copy=True)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        x = self._float(x)
        if self.mean is not None:
            x = x.sub_(self.mean)
        return x.mul_(1.0 / 255.0)

    def train(self, x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        """Training input: normalised and augmented with randomness from gen."""
        hp = self.hyper
        if not self.augments:
            return self._normalise(x).contiguous(memory_format=self.memory_format)
        if self.hsv:
            x = random_hsv(
                self._float(x).mul_(1.0 / 255.0),
                hp.aug_hsv_h,
                hp.aug_hsv_s,
                hp.aug_hsv_v,
                gen,
            )
            if self.mean is not None:
                x = x.sub_(self.mean * (1.0 / 255.0))
        else:
            x = self._normalise(x)
        if self.crop is not None:
            x = random_crop(x, self.crop, gen)
        if hp.aug_flip != "none":
            x = random_flip(x, hp.aug_flip, gen)
        if hp.aug_quad_rot != "none":
            x = random_quad_rotation(x, hp.aug_quad_rot, gen)
        if self.affine:
            x = random_affine(x, hp.aug_rot, hp.aug_scale, gen)
        if hp.aug_noise > 0:
            x = x + torch.randn(x.shape, generator=gen, device=x.device) * hp.aug_noise
        return x.contiguous(memory_format=self.memory_format)

    def eval(self, x: torch.Tensor) -> torch.Tensor:
        """Validation input: normalised and centre-cropped."""
        x = self._normalise(x)
        if self.crop is not None:
            x = centre_crop(x, self.crop)
        return x.contiguous(memory_format=self.memory_format)
