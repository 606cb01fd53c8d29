import math

import torch
from torch import nn


class RNN(nn.Module):
    """A recurrent encoder whose last hidden state (both directions) feeds a linear classifier.

    Images (C, H, W) are read as H time steps of C*W features. Sequences may have any length.
    """

    def __init__(self, input_spec, num_classes, cell="lstm", hidden=128, layers=1, bidirectional=True, dropout=0.0):
        super().__init__()
        shape = input_spec["shape"]
        self.image = input_spec["kind"] == "image"
        features = math.prod(shape[0:1] + shape[2:]) if self.image else shape[-1]
        if cell not in ("lstm", "gru"):
            raise ValueError(f"cell must be lstm or gru, got {cell!r}")
        if hidden < 1 or layers < 1:
            raise ValueError("hidden and layers must be >= 1")
        rnn_cls = nn.LSTM if cell == "lstm" else nn.GRU
        self.rnn = rnn_cls(features, hidden, num_layers=layers, batch_first=True, bidirectional=bidirectional,
                           dropout=dropout if layers > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden * (2 if bidirectional else 1), num_classes)

    def forward(self, x):
        if self.image:  # (B, C, H, W) -> (B, H, C*W)
            b, c, h, w = x.shape
            x = x.permute(0, 2, 1, 3).reshape(b, h, c * w)
        out, _ = self.rnn(x)
        # Features from the last time step; for the backward direction its output at t=0 is the
        # state after reading the whole sequence.
        half = self.rnn.hidden_size
        if self.rnn.bidirectional:
            last = out[:, -1, :half]
            first = out[:, 0, half:]
            feat = torch.cat([last, first], dim=1)
        else:
            feat = out[:, -1]
        return self.head(self.dropout(feat))
