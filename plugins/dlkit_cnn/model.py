from torch import nn


class CNN(nn.Module):
    """Conv blocks (conv -> [BN] -> ReLU, pooled), global average pooling, an MLP head."""

    def __init__(self, input_shape, num_classes, channels, kernel=3, convs_per_block=2, pool="max",
                 hidden=128, dropout=0.0, batch_norm=True):
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"expects images (C, H, W), got input shape {input_shape}")
        if not channels or not all(isinstance(c, int) and c > 0 for c in channels):
            raise ValueError(f"channels must be a non-empty list of positive ints, got {channels!r}")
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"kernel must be odd and positive, got {kernel}")
        if pool not in ("max", "avg", "none"):
            raise ValueError(f"pool must be max, avg or none, got {pool!r}")
        in_ch, size = input_shape[0], min(input_shape[1:])
        layers: list[nn.Module] = []
        for out_ch in channels:
            for _ in range(convs_per_block):
                layers.append(nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=not batch_norm))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(out_ch))
                layers.append(nn.ReLU(inplace=True))
                in_ch = out_ch
            if pool != "none" and size >= 4:
                layers.append(nn.MaxPool2d(2) if pool == "max" else nn.AvgPool2d(2))
                size //= 2
        self.features = nn.Sequential(*layers)
        head: list[nn.Module] = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        if dropout:
            head.append(nn.Dropout(dropout))
        if hidden:
            head += [nn.Linear(in_ch, hidden), nn.ReLU(inplace=True)]
            if dropout:
                head.append(nn.Dropout(dropout))
            in_ch = hidden
        head.append(nn.Linear(in_ch, num_classes))
        self.head = nn.Sequential(*head)

    def forward(self, x):
        return self.head(self.features(x))
