"""The autoencoder whose embeddings are clustered, and the graph that is exported.

:class:`ClusterAutoencoder` holds an encoder, a decoder (used only in training) and the k-means
centroids of its embeddings as a buffer, so the centroids are stored with the weights
(safetensors) and travel into the ONNX graph. Its ``forward`` returns the Euclidean distance of
each sample's embedding to each centroid (``[N, K]``): what the ``clustering`` task scores.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def mlp(widths: list[int], dropout: float, last_plain: bool = True) -> nn.Sequential:
    """Linear layers of ``widths`` with ReLU (and dropout) between them, none after the last."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2 or not last_plain:
            layers.append(nn.ReLU())
            if dropout:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class ConvEncoder(nn.Module):
    """Stride-2 convolutions (one per width), then a linear layer to the embedding."""

    def __init__(self, shape: list[int], channels: list[int], embedding: int, dropout: float):
        super().__init__()
        c, h, w = shape
        layers: list[nn.Module] = []
        for out in channels:
            layers += [nn.Conv2d(c, out, 3, stride=2, padding=1), nn.ReLU()]
            c, h, w = out, math.ceil(h / 2), math.ceil(w / 2)
        self.features = nn.Sequential(*layers)
        self.inner_shape = (c, h, w)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.project = nn.Linear(c * h * w, embedding)

    def forward(self, x):
        return self.project(self.dropout(self.features(x).flatten(1)))


class ConvDecoder(nn.Module):
    """The mirror of :class:`ConvEncoder`: a linear layer, then transposed convolutions that
    double the size, cropped to the input's size."""

    def __init__(self, shape: list[int], inner: tuple, channels: list[int], embedding: int):
        super().__init__()
        self.shape, self.inner = list(shape), inner
        self.expand = nn.Linear(embedding, math.prod(inner))
        widths = [*reversed(channels[:-1]), shape[0]]
        layers: list[nn.Module] = []
        c = inner[0]
        for i, out in enumerate(widths):
            layers.append(nn.ConvTranspose2d(c, out, 4, stride=2, padding=1))
            if i < len(widths) - 1:
                layers.append(nn.ReLU())
            c = out
        self.upsample = nn.Sequential(*layers)

    def forward(self, z):
        x = self.upsample(torch.relu(self.expand(z)).view(-1, *self.inner))
        return x[:, :, :self.shape[1], :self.shape[2]]


class ClusterAutoencoder(nn.Module):
    """Encoder, decoder and centroids (``[K, embedding]``, K fixed by k-means after training)."""

    def __init__(self, input_spec: dict, embedding: int = 10, hidden: list[int] | None = None,
                 channels: list[int] | None = None, dropout: float = 0.0, clusters: int = 0, encoder: str = "auto"):
        super().__init__()
        shape = [int(s) for s in input_spec["shape"]]
        self.kind = input_spec["kind"]
        self.flat = self.kind == "image" and encoder == "mlp"
        if self.kind == "image" and not self.flat:
            enc = ConvEncoder(shape, list(channels or [16, 32]), embedding, dropout)
            self.encoder, self.decoder = enc, ConvDecoder(shape, enc.inner_shape, list(channels or [16, 32]), embedding)
        else:
            widths = [math.prod(shape), *(hidden or [64, 32]), embedding]
            self.encoder = mlp(widths, dropout)
            self.decoder = mlp(list(reversed(widths)), dropout)
        self.register_buffer("centroids", torch.zeros(int(clusters), embedding))

    @property
    def clusters(self) -> int:
        return int(self.centroids.shape[0])

    def set_centroids(self, centroids) -> None:
        """Store k-means centroids (``[K, embedding]``): the buffer takes their shape."""
        self.centroids = torch.as_tensor(centroids, dtype=torch.float32, device=self.centroids.device).clone()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # K is chosen after the model is built (clusters=auto): take the stored centroids' shape.
        stored = state_dict.get(prefix + "centroids")
        if stored is not None and stored.shape != self.centroids.shape:
            self.centroids = torch.zeros_like(stored)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def encode(self, x):
        return self.encoder(x.flatten(1) if self.flat else x)

    def reconstruct(self, x):
        out = self.decoder(self.encode(x))
        return out.view(x.shape) if self.flat else out

    def forward(self, x):
        """Euclidean distances ``[N, K]`` of each sample's embedding to each centroid."""
        z = self.encode(x)
        return (z[:, None, :] - self.centroids[None]).pow(2).sum(-1).sqrt()


class ClusterGraph(nn.Module):
    """The exported graph: raw input -> ``cluster`` (int64, the nearest centroid) and ``distances``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        distances = self.model(x)
        return torch.argmin(distances, dim=1), distances
