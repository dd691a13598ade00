"""DrQ random-shift augmentation for image batches of any height and width."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class RandomShift(nn.Module):
    """Replicate-pad by ``pad`` pixels and crop back at a random integer offset per sample.

    Works for any (H, W), including non-square panoramas (84x420). Input may be uint8 or
    float; the output is float32 with the same value range as the input (no rescaling).
    ``pad=0`` is the identity. On the CPU each sample is one slice copy of the padded batch
    (~9 ms at 128x9x84x84 against ~42 ms for ``F.grid_sample``, a quarter of an end-to-end
    update on the strided trunk; benchmarks/rl_update.py); elsewhere one batched
    ``F.grid_sample`` call (no per-sample kernel launches). Both pick the same pixels from the
    same random offsets, so the output is identical.
    """

    def __init__(self, pad: int = 4) -> None:
        super().__init__()
        if pad < 0:
            raise ValueError(f"RandomShift pad={pad}; expected an integer >= 0")
        self.pad = int(pad)

    def forward(self, x: Tensor) -> Tensor:
        x = x.float()
        if self.pad == 0:
            return x
        batch_size = x.shape[0]
        padded = F.pad(x, (self.pad,) * 4, mode="replicate")  # (B, C, H+2p, W+2p)
        # Integer offsets in [0, 2*pad]; an offset of `pad` reproduces the input.
        shift = torch.randint(0, 2 * self.pad + 1, (batch_size, 2), device=x.device)
        crop = slice_crop if x.device.type == "cpu" else grid_crop
        return crop(padded, shift, self.pad)


def slice_crop(padded: Tensor, shift: Tensor, pad: int) -> Tensor:
    """(B, C, H, W) crops of ``padded`` (B, C, H+2p, W+2p) at offsets ``shift`` (B, 2) as
    (x, y): one slice copy per sample."""
    height, width = padded.shape[2] - 2 * pad, padded.shape[3] - 2 * pad
    return torch.stack(
        [
            padded[index, :, dy : dy + height, dx : dx + width]
            for index, (dx, dy) in enumerate(shift.tolist())
        ]
    )


def grid_crop(padded: Tensor, shift: Tensor, pad: int) -> Tensor:
    """The same crops as :func:`slice_crop` from one batched ``F.grid_sample`` call."""
    batch_size, _, padded_h, padded_w = padded.shape
    height, width = padded_h - 2 * pad, padded_w - 2 * pad
    dtype, device = padded.dtype, padded.device
    shift_x = shift[:, 0].to(dtype).view(batch_size, 1, 1)
    shift_y = shift[:, 1].to(dtype).view(batch_size, 1, 1)
    cols = torch.arange(width, device=device, dtype=dtype).view(1, 1, width)
    rows = torch.arange(height, device=device, dtype=dtype).view(1, height, 1)
    # Pixel centres in grid_sample's normalised coordinates (align_corners=False),
    # so every output pixel lands exactly on one padded input pixel.
    grid_x = (2.0 * (cols + shift_x) + 1.0) / padded_w - 1.0  # (B, 1, W)
    grid_y = (2.0 * (rows + shift_y) + 1.0) / padded_h - 1.0  # (B, H, 1)
    grid = torch.stack(
        (grid_x.expand(batch_size, height, width), grid_y.expand(batch_size, height, width)),
        dim=-1,
    )  # (B, H, W, 2) as (x, y)
    # Nearest sampling at exact pixel centres gives exact shifted copies.
    return F.grid_sample(padded, grid, mode="nearest", padding_mode="border", align_corners=False)
