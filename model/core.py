"""The recommendation core: batched rating predictions and top-K over all movies."""

from __future__ import annotations

import numpy as np
import torch

from model.artifact import Artifact

PARITY_TOL = 1e-4
CHUNK = 2048  # pairs scored per step: two [CHUNK, nh] float32 buffers stay in cache


class Recommender:
    """Scores (user row, movie row) pairs and ranks movies for a user, on one device.

    Not thread-safe (it reuses scratch buffers); TorchServe runs one per worker process.
    """

    def __init__(self, artifact: Artifact, device: str | torch.device = "cpu", min_movie_ratings: int = 0):
        self.artifact = artifact
        self.device = torch.device(device)
        self.module = artifact.module.to(self.device).eval()
        net = artifact.net
        self.y_min, self.y_max = float(net.y_min), float(net.y_max)
        # Factorisation of the eval-mode network: lin1([u, m]) = (Wu.u) + (Wm.m + b1). Both halves
        # depend on one ID only, so precompute them per user and per movie at load time. A pair then
        # costs two row gathers, an add, a ReLU and a dot product instead of a 2nf x nh matmul
        # (about 20x less work), and top-K for a user is one broadcast add over all movies.
        with torch.inference_mode():
            w = {k: v.detach().to(self.device).float() for k, v in self.module.state_dict().items()}
            nf = w["u.weight"].shape[1]
            self._user_part = w["u.weight"] @ w["lin1.weight"][:, :nf].T
            self._movie_part = w["m.weight"] @ w["lin1.weight"][:, nf:].T + w["lin1.bias"]
            self._user_logit = w["ub.weight"][:, 0].contiguous()
            self._movie_logit = (w["mb.weight"][:, 0] + w["lin2.bias"][0]).contiguous()
            self._w_out = w["lin2.weight"][0].contiguous()
        nh = self._movie_part.shape[1]
        self._buffers = (torch.empty(CHUNK, nh, device=self.device), torch.empty(CHUNK, nh, device=self.device))
        self.parity = self._check_parity()
        # Movies with only a handful of ratings get extreme learned biases and would top every list
        # ("Santa with Muscles", 1 rating); recommendations skip them, rating predictions do not.
        counts = np.bincount(artifact.rated_indices, minlength=len(artifact.movies))
        self.min_movie_ratings = min_movie_ratings
        self._rare = torch.from_numpy(counts < min_movie_ratings).to(self.device)
        self._n_eligible = int((counts >= min_movie_ratings).sum())

    def _check_parity(self, n: int = 4096) -> float:
        """Max |factorised - TorchScript| over random pairs; the factorised path is only used if tiny."""
        gen = torch.Generator().manual_seed(0)
        users = torch.randint(0, self._user_part.shape[0], (n,), generator=gen).numpy()
        movies = torch.randint(0, self._movie_part.shape[0], (n,), generator=gen).numpy()
        with torch.inference_mode():
            exact = self.module(torch.from_numpy(users).to(self.device), torch.from_numpy(movies).to(self.device))
        diff = float(np.abs(self._factorised(users, movies) - exact.float().cpu().numpy()).max())
        if diff > PARITY_TOL:
            raise ValueError(f"factorised scoring differs from the TorchScript model by {diff:.2e}")
        return diff

    @torch.inference_mode()
    def _factorised(self, user_rows: np.ndarray, movie_rows: np.ndarray) -> np.ndarray:
        users = torch.from_numpy(np.asarray(user_rows, dtype=np.int64)).to(self.device)
        movies = torch.from_numpy(np.asarray(movie_rows, dtype=np.int64)).to(self.device)
        logit = torch.empty(len(users), device=self.device)
        # Chunks through two persistent buffers: a fresh [10k, nh] tensor per request cost more in
        # page faults (after the JSON parse had churned the heap) than the arithmetic itself.
        hu, hm = self._buffers
        for start in range(0, len(users), CHUNK):
            u, m = users[start : start + CHUNK], movies[start : start + CHUNK]
            hidden = torch.index_select(self._user_part, 0, u, out=hu[: len(u)])
            hidden.add_(torch.index_select(self._movie_part, 0, m, out=hm[: len(m)])).relu_()
            torch.mv(hidden, self._w_out, out=logit[start : start + len(u)])
        logit.add_(self._user_logit.index_select(0, users)).add_(self._movie_logit.index_select(0, movies))
        return self._scale(logit).cpu().numpy()

    def predict(self, user_rows: np.ndarray, movie_rows: np.ndarray) -> np.ndarray:
        """Ratings for aligned arrays of known rows, all in one pass."""
        if len(user_rows) == 0:
            return np.empty(0, dtype=np.float32)
        return self._factorised(user_rows, movie_rows)

    @torch.inference_mode()
    def predict_exact(self, user_rows: np.ndarray, movie_rows: np.ndarray) -> np.ndarray:
        """Ratings from the TorchScript module's own forward (the reference for parity checks)."""
        users = torch.from_numpy(np.asarray(user_rows, dtype=np.int64)).to(self.device)
        movies = torch.from_numpy(np.asarray(movie_rows, dtype=np.int64)).to(self.device)
        return self.module(users, movies).float().cpu().numpy()

    def _scale(self, logit: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logit) * (self.y_max - self.y_min + 1) + self.y_min - 0.5

    @torch.inference_mode()
    def recommend(self, user_row: int, k: int, exclude_rated: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Top-k movie rows and predicted ratings for one user, best first."""
        hidden = torch.relu(self._movie_part + self._user_part[user_row])
        logit = hidden @ self._w_out + self._movie_logit + self._user_logit[user_row]
        logit.masked_fill_(self._rare, float("-inf"))
        available = self._n_eligible
        if exclude_rated:
            rated = torch.from_numpy(self.artifact.rated_by(user_row).astype(np.int64)).to(self.device)
            available -= int((~self._rare[rated]).sum())
            logit[rated] = float("-inf")
        # The sigmoid is monotonic, so rank on logits and scale only the winners.
        best = torch.topk(logit, max(0, min(k, available)))
        return best.indices.cpu().numpy(), self._scale(best.values).float().cpu().numpy()
