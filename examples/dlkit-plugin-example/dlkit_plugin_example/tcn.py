"""The ``tcn`` architecture: residual blocks of dilated causal 1-D convolutions."""

import torch.nn.functional as F
from torch import nn


class TemporalBlock(nn.Module):
    """Two causal convolutions (left padding only) with ReLU and dropout, plus a residual path."""

    def __init__(self, c_in: int, c_out: int, kernel: int, dilation: int, dropout: float):
        super().__init__()
        self.pad = (kernel - 1) * dilation
        self.conv1 = nn.Conv1d(c_in, c_out, kernel, dilation=dilation)
        self.conv2 = nn.Conv1d(c_out, c_out, kernel, dilation=dilation)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x):
        y = self.dropout(F.relu(self.conv1(F.pad(x, (self.pad, 0)))))
        y = self.dropout(F.relu(self.conv2(F.pad(y, (self.pad, 0)))))
        return F.relu(y + self.skip(x))


class TCN(nn.Module):
    """A temporal convolution network classifier over (batch, time, features).

    Images (C, H, W) are read as H time steps of C*W features, so the same model takes digits.
    The features are averaged over time before the linear head: any sequence length works.
    """

    def __init__(self, input_spec, num_classes, channels=(32, 32), kernel=3, dropout=0.0):
        super().__init__()
        shape = list(input_spec["shape"])
        self.image = input_spec["kind"] == "image"
        if self.image and len(shape) != 3:
            raise ValueError(f"tcn reads images as (C, H, W), got shape {shape}")
        if not self.image and len(shape) != 2:
            raise ValueError(f"tcn reads sequences as (time, features), got shape {shape}")
        if not channels or not all(isinstance(c, int) and c > 0 for c in channels):
            raise ValueError(f"channels must be a non-empty list of positive sizes, got {channels!r}")
        if not isinstance(kernel, int) or kernel < 2:
            raise ValueError(f"kernel must be an integer >= 2, got {kernel!r}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        width = shape[0] * shape[2] if self.image else shape[-1]
        blocks = []
        for i, c in enumerate(channels):
            blocks.append(TemporalBlock(width, c, kernel, 2 ** i, dropout))
            width = c
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        if self.image:  # (B, C, H, W) -> (B, H, C*W)
            b, c, h, w = x.shape
            x = x.permute(0, 2, 1, 3).reshape(b, h, c * w)
        x = self.blocks(x.transpose(1, 2))  # convolve over time: (B, features, T)
        return self.head(x.mean(dim=2))
