"""The fast.ai EmbeddingNet: concat(user, movie embeddings) -> MLP -> sigmoid scaled to the rating range.

Two architectures share the module (NetConfig.arch):
    embedding-net   the lesson's network, as published
    fused           the same, plus a dot product of a second pair of user and movie factors added at
                    the logit (NeuMF-style, He et al. 2017): the MLP struggles to learn a dot product
                    (Rendle et al. 2020), so the model is given one
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ARCHS = ("embedding-net", "fused")


@dataclass
class NetConfig:
    """Everything needed to rebuild the network; saved in the artifact's metadata."""

    n_users: int
    n_movies: int
    n_factors: int = 64
    nh: int = 128
    p1: float = 0.4
    p2: float = 0.5
    y_min: float = 1.0
    y_max: float = 5.0
    bias: bool = True
    arch: str = "embedding-net"
    n_dot: int = 0  # width of the dot-product factors (arch "fused"; 0 for the lesson's network)

    def to_dict(self) -> dict:
        """Plain-JSON form for metadata.json."""
        return asdict(self)


class EmbeddingNet(nn.Module):
    """User and movie embeddings -> concat -> dropout -> Linear -> ReLU -> dropout -> Linear -> scaled sigmoid.

    With `bias`, per-user and per-movie scalars are added to the logit before the sigmoid
    (without it they stay zero and frozen, so the scripted module has one shape either way).
    """

    def __init__(self, cfg: NetConfig):
        super().__init__()
        if cfg.arch not in ARCHS or (cfg.arch == "embedding-net") != (cfg.n_dot == 0):
            raise ValueError(f"arch {cfg.arch!r} with n_dot {cfg.n_dot}: embedding-net has none, fused needs some")
        nf = cfg.n_factors
        self.u = nn.Embedding(cfg.n_users, nf)
        self.m = nn.Embedding(cfg.n_movies, nf)
        self.ub = nn.Embedding(cfg.n_users, 1)
        self.mb = nn.Embedding(cfg.n_movies, 1)
        self.ud = nn.Embedding(cfg.n_users, cfg.n_dot)
        self.md = nn.Embedding(cfg.n_movies, cfg.n_dot)
        self.drop1 = nn.Dropout(cfg.p1)
        self.lin1 = nn.Linear(2 * nf, cfg.nh)
        self.drop2 = nn.Dropout(cfg.p2)
        self.lin2 = nn.Linear(cfg.nh, 1)
        self.y_min = float(cfg.y_min)
        self.y_max = float(cfg.y_max)
        for emb in (self.u, self.m, self.ud, self.md):
            nn.init.uniform_(emb.weight, -0.01, 0.01)
        for bias in (self.ub, self.mb):
            nn.init.zeros_(bias.weight)
            bias.weight.requires_grad_(cfg.bias)
        # The lesson's net keeps zero-width dot tables so that both archs script to one shape. They must
        # stay out of autograd: CUDA's embedding backward reads a null pointer for a zero-width table
        # (an illegal memory access that killed every embedding-net run on a GPU).
        for emb in (self.ud, self.md):
            emb.weight.requires_grad_(cfg.n_dot > 0)

    def forward(self, users: Tensor, movies: Tensor) -> Tensor:
        """Predicted ratings, shape [batch], in (y_min - 0.5, y_max + 0.5)."""
        x = self.drop1(torch.cat([self.u(users), self.m(movies)], dim=1))
        x = self.drop2(F.relu(self.lin1(x)))
        logit = self.lin2(x).squeeze(1) + self.ub(users).squeeze(1) + self.mb(movies).squeeze(1)
        if self.ud.embedding_dim > 0:
            logit = logit + (self.ud(users) * self.md(movies)).sum(1)
        return torch.sigmoid(logit) * (self.y_max - self.y_min + 1) + self.y_min - 0.5
