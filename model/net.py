"""The fast.ai EmbeddingNet: concat(user, movie embeddings) -> MLP -> sigmoid scaled to the rating range."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


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
        nf = cfg.n_factors
        self.u = nn.Embedding(cfg.n_users, nf)
        self.m = nn.Embedding(cfg.n_movies, nf)
        self.ub = nn.Embedding(cfg.n_users, 1)
        self.mb = nn.Embedding(cfg.n_movies, 1)
        self.drop1 = nn.Dropout(cfg.p1)
        self.lin1 = nn.Linear(2 * nf, cfg.nh)
        self.drop2 = nn.Dropout(cfg.p2)
        self.lin2 = nn.Linear(cfg.nh, 1)
        self.y_min = float(cfg.y_min)
        self.y_max = float(cfg.y_max)
        for emb in (self.u, self.m):
            nn.init.uniform_(emb.weight, -0.01, 0.01)
        for bias in (self.ub, self.mb):
            nn.init.zeros_(bias.weight)
            bias.weight.requires_grad_(cfg.bias)

    def forward(self, users: Tensor, movies: Tensor) -> Tensor:
        """Predicted ratings, shape [batch], in (y_min - 0.5, y_max + 0.5)."""
        x = self.drop1(torch.cat([self.u(users), self.m(movies)], dim=1))
        x = self.drop2(F.relu(self.lin1(x)))
        logit = self.lin2(x).squeeze(1) + self.ub(users).squeeze(1) + self.mb(movies).squeeze(1)
        return torch.sigmoid(logit) * (self.y_max - self.y_min + 1) + self.y_min - 0.5
