"""DCGAN-style generator and discriminator, sized from the data set's image shape."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm


def _check_widths(name: str, widths) -> list[int]:
    if not isinstance(widths, (list, tuple)) or not widths or not all(
            isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths):
        raise ValueError(f"{name} must be a non-empty list of positive ints, got {widths!r}")
    return list(widths)


class Generator(nn.Module):
    """Noise (and a label) -> image in [-1, 1]: a linear projection to a small feature map,
    then one stride-2 transposed convolution per width (batch norm, ReLU), tanh at the end.

    The first feature map is ``ceil(H / 2^k)`` by ``ceil(W / 2^k)`` for ``k = len(widths)``
    upsampling steps; a result larger than the image (odd sizes) is centre-cropped.
    """

    def __init__(self, image_shape, latent: int, widths, num_classes: int = 0, embed: int = 0):
        super().__init__()
        channels, height, width = image_shape
        self.image_shape = (channels, height, width)
        self.latent = latent
        self.widths = widths
        steps = len(widths)
        self.start = (math.ceil(height / 2 ** steps), math.ceil(width / 2 ** steps))
        self.label_embedding = nn.Embedding(num_classes, embed) if num_classes else None
        in_dim = latent + (embed if num_classes else 0)
        self.project = nn.Linear(in_dim, widths[0] * self.start[0] * self.start[1], bias=False)
        self.project_norm = nn.BatchNorm2d(widths[0])
        layers: list[nn.Module] = []
        for a, b in zip(widths, widths[1:]):
            layers += [nn.ConvTranspose2d(a, b, 4, 2, 1, bias=False), nn.BatchNorm2d(b), nn.ReLU(inplace=True)]
        layers += [nn.ConvTranspose2d(widths[-1], channels, 4, 2, 1), nn.Tanh()]
        self.blocks = nn.Sequential(*layers)

    def forward(self, noise, label=None):
        z = noise
        if self.label_embedding is not None:
            z = torch.cat([z, self.label_embedding(label)], dim=1)
        h = self.project(z).reshape(-1, self.widths[0], self.start[0], self.start[1])
        x = self.blocks(torch.relu(self.project_norm(h)))
        _, height, width = self.image_shape
        top, left = (x.shape[2] - height) // 2, (x.shape[3] - width) // 2
        if top or left:
            x = x[:, :, top:top + height, left:left + width]
        return x


class Discriminator(nn.Module):
    """Image (and a label) -> one real/fake score (a logit).

    One convolution per width (4x4 stride 2 while the map is at least 4 pixels, else 3x3
    stride 1), LeakyReLU 0.2, batch norm after the first layer unless spectral normalisation
    is on. Conditional models use a projection head (Miyato & Koyama, 2018): the score adds
    the inner product of a label embedding with the features.
    """

    def __init__(self, image_shape, widths, num_classes: int = 0, spectral_norm: bool = False):
        super().__init__()
        channels, height, width = image_shape
        sn = _spectral_norm if spectral_norm else (lambda m: m)
        layers: list[nn.Module] = []
        in_ch, size = channels, [height, width]
        for i, out_ch in enumerate(widths):
            if min(size) >= 4:
                conv = nn.Conv2d(in_ch, out_ch, 4, 2, 1)
                size = [s // 2 for s in size]
            else:
                conv = nn.Conv2d(in_ch, out_ch, 3, 1, 1)
            layers.append(sn(conv))
            if i > 0 and not spectral_norm:
                layers.append(nn.BatchNorm2d(out_ch))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        features = in_ch * size[0] * size[1]
        self.head = sn(nn.Linear(features, 1))
        self.projection = sn(nn.Embedding(num_classes, features)) if num_classes else None

    def forward(self, image, label=None):
        h = self.features(image).flatten(1)
        score = self.head(h).squeeze(1)
        if self.projection is not None:
            score = score + (self.projection(label) * h).sum(1)
        return score


class GAN(nn.Module):
    """Both networks in one module (one weights file); ``forward`` is the generator's, with its
    output mapped from tanh's [-1, 1] to the data set's value range."""

    def __init__(self, input_shape, num_classes, value_range=(0.0, 1.0), *, latent, g_widths, d_widths,
                 conditional, embed, spectral_norm):
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"expects images (C, H, W), got input shape {input_shape}")
        if not isinstance(latent, int) or isinstance(latent, bool) or latent < 1:
            raise ValueError(f"latent must be a positive int, got {latent!r}")
        if conditional and (not isinstance(embed, int) or isinstance(embed, bool) or embed < 1):
            raise ValueError(f"embed must be a positive int when conditional, got {embed!r}")
        if conditional and num_classes < 2:
            raise ValueError(f"a conditional GAN needs at least 2 classes, the data has {num_classes}")
        g_widths = _check_widths("g_widths", g_widths)
        d_widths = _check_widths("d_widths", d_widths)
        low, high = (float(v) for v in value_range)
        if not high > low:
            raise ValueError(f"the data's value range {value_range} is empty")
        self.low, self.high = low, high
        self.conditional = bool(conditional)
        self.num_classes = num_classes
        classes = num_classes if conditional else 0
        self.generator = Generator(input_shape, latent, g_widths, classes, embed)
        self.discriminator = Discriminator(input_shape, d_widths, classes, spectral_norm)
        self.apply(_dcgan_init)
        if self.discriminator.projection is not None:  # start as an unconditional critic
            nn.init.normal_(_weight(self.discriminator.projection), 0.0, 0.02)

    @property
    def latent(self) -> int:
        return self.generator.latent

    def forward(self, noise, label=None):
        return self.to_data_range(self.generator(noise, label))

    def to_data_range(self, t):
        return self.low + (t + 1.0) * (0.5 * (self.high - self.low))

    def from_data_range(self, x):
        return (x - self.low) * (2.0 / (self.high - self.low)) - 1.0


class GeneratorGraph(nn.Module):
    """What ONNX export traces: ``noise`` (and ``label``) -> ``image`` in the data's range."""

    def __init__(self, gan: GAN):
        super().__init__()
        self.gan = gan

    def forward(self, noise):
        return self.gan(noise)


class ConditionalGeneratorGraph(GeneratorGraph):
    """The conditional generator's graph: ``noise``, ``label`` -> ``image``."""

    def forward(self, noise, label):
        return self.gan(noise, label)


def generator_graph(gan: GAN) -> GeneratorGraph:
    """The module to export for ``gan`` (only the generator's weights end up in the graph)."""
    return (ConditionalGeneratorGraph if gan.conditional else GeneratorGraph)(gan).eval()


def _dcgan_init(m: nn.Module) -> None:
    # Radford et al.: N(0, 0.02) weights, batch-norm scales N(1, 0.02). The generator's label
    # embedding keeps N(0, 1), on the scale of the noise it is concatenated to.
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(_weight(m), 0.0, 0.02)
        if getattr(m, "bias", None) is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def _weight(m: nn.Module):
    """A layer's weight tensor; spectral-normalised ones keep it under parametrizations."""
    return m.parametrizations.weight.original if hasattr(m, "parametrizations") else m.weight
