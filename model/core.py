"""The recommendation core: batched rating predictions and top-K over all movies."""

from __future__ import annotations

import numpy as np
import torch

from model.artifact import Artifact


class Recommender:
    """Scores (user row, movie row) pairs and ranks movies for a user, on one device."""

    def __init__(self, artifact: Artifact, device: str | torch.device = "cpu"):
        self.artifact = artifact
        self.device = torch.device(device)
        self.module = artifact.module.to(self.device).eval()
        net = artifact.net
        self.y_min, self.y_max = float(net.y_min), float(net.y_max)
        # Top-K factorisation: lin1([u, m]) = Wu.u + (Wm.m + b1). The movie half is the same for
        # every user, so precompute it once; one user then costs a broadcast add, not a full MLP.
        w = {k: v.detach().to(self.device) for k, v in self.module.state_dict().items()}
        nf = w["u.weight"].shape[1]
        self._user_emb = w["u.weight"]
        self._user_bias = w["ub.weight"][:, 0]
        self._w_user = w["lin1.weight"][:, :nf].T.contiguous()
        self._movie_part = w["m.weight"] @ w["lin1.weight"][:, nf:].T + w["lin1.bias"]
        self._movie_logit = w["mb.weight"][:, 0] + w["lin2.bias"][0]
        self._w_out = w["lin2.weight"][0]

    @torch.inference_mode()
    def predict(self, user_rows: np.ndarray, movie_rows: np.ndarray) -> np.ndarray:
        """Ratings for aligned arrays of known rows, in one forward pass."""
        if len(user_rows) == 0:
            return np.empty(0, dtype=np.float32)
        users = torch.from_numpy(np.asarray(user_rows, dtype=np.int64)).to(self.device)
        movies = torch.from_numpy(np.asarray(movie_rows, dtype=np.int64)).to(self.device)
        return self.module(users, movies).float().cpu().numpy()

    def _scale(self, logit: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logit) * (self.y_max - self.y_min + 1) + self.y_min - 0.5

    @torch.inference_mode()
    def recommend(self, user_row: int, k: int, exclude_rated: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Top-k movie rows and predicted ratings for one user, best first."""
        hidden = torch.relu(self._movie_part + self._user_emb[user_row] @ self._w_user)
        logit = hidden @ self._w_out + self._movie_logit + self._user_bias[user_row]
        if exclude_rated:
            rated = torch.from_numpy(self.artifact.rated_by(user_row).astype(np.int64)).to(self.device)
            logit[rated] = float("-inf")
            k = min(k, len(logit) - len(rated))
        # The sigmoid is monotonic, so rank on logits and scale only the winners.
        best = torch.topk(logit, min(k, len(logit)))
        return best.indices.cpu().numpy(), self._scale(best.values).float().cpu().numpy()
