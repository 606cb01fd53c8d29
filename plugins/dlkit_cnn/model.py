from torch import nn


def _conv(in_ch, out_ch, kernel, batch_norm, relu=True):
    layers = [nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_ch))
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return layers


class Residual(nn.Module):
    """A ResNet basic block: the block's convs (the last one's ReLU after the sum) plus a shortcut,
    the identity or, where the channel count changes, a 1x1 conv (He et al., 2016)."""

    def __init__(self, in_ch, out_ch, kernel, convs, batch_norm):
        super().__init__()
        layers = []
        for i in range(convs):
            layers += _conv(in_ch if i == 0 else out_ch, out_ch, kernel, batch_norm, relu=i < convs - 1)
        self.body = nn.Sequential(*layers)
        self.shortcut = nn.Identity() if in_ch == out_ch else nn.Sequential(*_conv(in_ch, out_ch, 1, batch_norm,
                                                                                     relu=False))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.body(x) + self.shortcut(x))


class CNN(nn.Module):
    """Conv blocks (conv -> [BN] -> ReLU, pooled; with ``residual``, ResNet basic blocks), global
    average pooling, an MLP head."""

    def __init__(self, input_shape, num_classes, channels, kernel=3, convs_per_block=2, pool="max",
                 hidden=128, dropout=0.0, batch_norm=True, residual=False):
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"expects images (C, H, W), got input shape {input_shape}")
        if not channels or not all(isinstance(c, int) and c > 0 for c in channels):
            raise ValueError(f"channels must be a non-empty list of positive ints, got {channels!r}")
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"kernel must be odd and positive, got {kernel}")
        if not isinstance(convs_per_block, int) or convs_per_block < 1:
            raise ValueError(f"convs_per_block must be a positive int, got {convs_per_block!r}")
        if pool not in ("max", "avg", "none"):
            raise ValueError(f"pool must be max, avg or none, got {pool!r}")
        in_ch, size = input_shape[0], min(input_shape[1:])
        layers: list[nn.Module] = []
        for out_ch in channels:
            if residual:
                layers.append(Residual(in_ch, out_ch, kernel, convs_per_block, batch_norm))
            else:
                for i in range(convs_per_block):
                    layers += _conv(in_ch if i == 0 else out_ch, out_ch, kernel, batch_norm)
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
