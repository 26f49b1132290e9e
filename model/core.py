"""The recommendation core: batched rating predictions and top-K over all movies.

Ratings come from the rating model (model.pt). Top-K lists come from the ranker (ranker.pt) when the
artifact has one, one matrix-vector product per user, and their scores are the ranker's; a v1/v2
artifact has none, and ranks by predicted rating.
"""

from __future__ import annotations

import numpy as np
import torch

from model.artifact import Artifact, ColdStart

PARITY_TOL = 1e-4
CHUNK = 2048  # pairs scored per step: two [CHUNK, nh] float32 buffers stay in cache
SCALE_WIDTH = 64  # scores are scaled in rows of whole multiples of this (see _top_k_block)
TOPK_ELEMENTS = 1 << 19  # hidden units per top-K step (2 MiB): one user x a slice of movies, in L2/L3
TOPK_LOGITS = 1 << 20  # logits per block of users (4 MiB): ~17 users at 59k movies, ~600 at ML-100K


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
            # Arch "fused" adds a dot product at the logit (none before format v3, or in the lesson's net).
            self._user_dot = w.get("ud.weight", w["u.weight"][:, :0]).contiguous()
            self._movie_dot = w.get("md.weight", w["m.weight"][:, :0]).contiguous()
        nh = self._movie_part.shape[1]
        self._buffers = (torch.empty(CHUNK, nh, device=self.device), torch.empty(CHUNK, nh, device=self.device))
        self.ranker = artifact.ranker.to(self.device).eval() if artifact.ranker is not None else None
        if self.ranker is not None:
            with torch.inference_mode():
                r = {k: v.detach().to(self.device).float() for k, v in self.ranker.state_dict().items()}
                self._rank_user, self._rank_movie = r["u.weight"], r["m.weight"].contiguous()
                self._rank_bias = r["mb.weight"][:, 0].contiguous()
        self.parity = self._check_parity()
        # Movies with only a handful of ratings get extreme learned biases and would top every list
        # ("Santa with Muscles", 1 rating); recommendations skip them, rating predictions do not.
        counts = np.bincount(artifact.rated_indices, minlength=len(artifact.movies))
        self.min_movie_ratings = min_movie_ratings
        self._rare_host = counts < min_movie_ratings
        self._rare = torch.from_numpy(self._rare_host).to(self.device)
        self._topk_buffer: torch.Tensor | None = None  # made by the first top-K call
        self._topk_row = torch.empty(0)
        self._n_eligible = int((counts >= min_movie_ratings).sum())
        # Rows for IDs the model never saw (None without cold-start data: a format v1 artifact).
        self.average_user, self.average_movie = self._add_average_rows(artifact.cold_start)
        self.global_mean = None if artifact.cold_start is None else artifact.cold_start.global_mean
        if self.ranker is not None:
            # Rare movies get a -inf bias for ranking only, so one addmv per user both adds the bias
            # and masks them: no separate pass over the 59k-movie row for each.
            self._rank_offset = self._rank_bias.masked_fill(self._rare, float("-inf"))

    @torch.inference_mode()
    def _add_average_rows(self, cold: ColdStart | None) -> tuple[int | None, int | None]:
        """Append the average user and movie as one extra row of each factorised table; return their rows.

        Unknown IDs then score through the same gathers as known ones. The average movie is marked
        rare, so top-K never recommends it; the parity check ran before, on the real rows only.
        """
        if cold is None:
            return None, None
        w = {k: v.detach().to(self.device).float() for k, v in self.module.state_dict().items()}
        nf = w["u.weight"].shape[1]
        user = torch.from_numpy(cold.user_embedding).to(self.device)[None]
        movie = torch.from_numpy(cold.movie_embedding).to(self.device)[None]
        rows = len(self.artifact.users), len(self.artifact.movies)
        self._user_part = torch.cat([self._user_part, user @ w["lin1.weight"][:, :nf].T])
        self._movie_part = torch.cat([self._movie_part, movie @ w["lin1.weight"][:, nf:].T + w["lin1.bias"]])
        self._user_logit = torch.cat([self._user_logit, self._user_logit.new_tensor([cold.user_bias])])
        movie_logit = self._movie_logit.new_tensor([cold.movie_bias]) + w["lin2.bias"]
        self._movie_logit = torch.cat([self._movie_logit, movie_logit])
        self._rare_host = np.append(self._rare_host, True)
        self._rare = torch.from_numpy(self._rare_host).to(self.device)
        self._user_dot = torch.cat([self._user_dot, self._user_dot.mean(0, keepdim=True)])
        self._movie_dot = torch.cat([self._movie_dot, self._movie_dot.mean(0, keepdim=True)])
        if self.ranker is not None:
            # The ranker's average user ranks by what everyone picks: a popularity list.
            self._rank_user = torch.cat([self._rank_user, self._rank_user.mean(0, keepdim=True)])
            self._rank_movie = torch.cat([self._rank_movie, self._rank_movie.new_zeros(1, self._rank_movie.shape[1])])
            self._rank_bias = torch.cat([self._rank_bias, self._rank_bias.new_zeros(1)])
        return rows

    def predict_or_fallback(self, user_rows: np.ndarray, movie_rows: np.ndarray) -> np.ndarray:
        """Ratings where a row may be the average user or movie; a pair of both is the training mean."""
        ratings = self.predict(user_rows, movie_rows)
        if self.average_user is not None:
            ratings[(user_rows == self.average_user) & (movie_rows == self.average_movie)] = self.global_mean
        return ratings

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
        if self.ranker is not None:
            u, m = torch.from_numpy(users).to(self.device), torch.from_numpy(movies).to(self.device)
            with torch.inference_mode():
                exact = self.ranker(u, m).float()
                mine = (self._rank_user[u] * self._rank_movie[m]).sum(1) + self._rank_bias[m]
            ranker_diff = float((exact - mine).abs().max())
            if ranker_diff > PARITY_TOL:
                raise ValueError(f"ranking by factors differs from the TorchScript ranker by {ranker_diff:.2e}")
            diff = max(diff, ranker_diff)
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
        if self._user_dot.shape[1]:
            logit.add_((self._user_dot.index_select(0, users) * self._movie_dot.index_select(0, movies)).sum(1))
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

    def recommend(self, user_row: int, k: int, exclude_rated: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Top-k movie rows and their scores for one user, best first (see recommend_many)."""
        return self.recommend_many(np.array([user_row], dtype=np.int64), k, exclude_rated)[0]

    @torch.inference_mode()
    def recommend_many(
        self, user_rows: np.ndarray, k: int, exclude_rated: bool = True
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Top-k (movie rows, scores) for each of many users, best first, a block of users at a time.

        Scores are the ranker's when the artifact has one, else predicted ratings.

        recommend() must equal this exactly, since it is this with one user: every user's logits come
        from the same calls on the same shapes and buffers (see _block_logits), whatever the block holds.
        """
        user_rows = np.asarray(user_rows, dtype=np.int64)
        per_step = max(1, TOPK_LOGITS // self._movie_part.shape[0])
        answers: list[tuple[np.ndarray, np.ndarray]] = []
        for start in range(0, len(user_rows), per_step):
            answers.extend(self._top_k_block(user_rows[start : start + per_step], k, exclude_rated))
        return answers

    def _block_scores(self, users: torch.Tensor) -> torch.Tensor:
        """[users, movies] ranker scores, rare movies -inf: one matrix-vector product per user into one scratch row.

        Per user rather than one matmul per block, so that a user's bits do not depend on the block.
        """
        n_movies = self._rank_movie.shape[0]
        if self._topk_row.shape[0] != n_movies:
            self._topk_row = torch.empty(n_movies, device=self.device)
        scores = torch.empty(len(users), n_movies, device=self.device)
        for i, u in enumerate(users.tolist()):
            scores[i] = torch.addmv(self._rank_offset, self._rank_movie, self._rank_user[u], out=self._topk_row)
        return scores

    def _block_logits(self, users: torch.Tensor) -> torch.Tensor:
        """[users, movies] logits: per slice of movies and per user, add + ReLU into one buffer, then a BLAS mv.

        The slices are fixed by the catalogue alone, and the mv always reads the same scratch buffer and
        writes the same scratch row, so a user's bits do not depend on the block (a BLAS kernel may pick
        its path by shape or alignment). Slices outside, users inside: a block reuses each slice from cache.
        """
        n_movies, nh = self._movie_part.shape
        step = max(1, min(n_movies, TOPK_ELEMENTS // nh))
        if self._topk_buffer is None:
            self._topk_buffer = torch.empty(step, nh, device=self.device)
            self._topk_row = torch.empty(step, device=self.device)
        logit = torch.empty(len(users), n_movies, device=self.device)
        user_part = self._user_part.index_select(0, users)
        for start in range(0, n_movies, step):
            movies = self._movie_part[start : start + step]
            hidden, row = self._topk_buffer[: len(movies)], self._topk_row[: len(movies)]
            for i in range(len(users)):
                torch.add(movies, user_part[i], out=hidden).relu_()
                logit[i, start : start + len(movies)] = torch.mv(hidden, self._w_out, out=row)
        if self._user_dot.shape[1]:
            for i, u in enumerate(users.tolist()):
                logit[i].add_(torch.mv(self._movie_dot, self._user_dot[u]))
        return logit.add_(self._movie_logit).add_(self._user_logit.index_select(0, users)[:, None])

    def _top_k_block(self, user_rows: np.ndarray, k: int, exclude_rated: bool) -> list[tuple[np.ndarray, np.ndarray]]:
        users = torch.from_numpy(user_rows).to(self.device)
        if self.ranker is not None:
            logit = self._block_scores(users)
        else:
            logit = self._block_logits(users).masked_fill_(self._rare, float("-inf"))
        available = np.full(len(user_rows), self._n_eligible, dtype=np.int64)
        if exclude_rated:
            rated = [self.artifact.rated_by(int(u)).astype(np.int64) for u in user_rows.tolist()]
            owner = np.repeat(np.arange(len(rated)), [len(r) for r in rated])
            movies = np.concatenate(rated) if rated else np.empty(0, dtype=np.int64)
            eligible = ~self._rare_host[movies]
            available -= np.bincount(owner[eligible], minlength=len(rated))
            logit[torch.from_numpy(owner).to(self.device), torch.from_numpy(movies).to(self.device)] = float("-inf")
        # The sigmoid is monotonic, so rank on logits and scale only the winners. Each user keeps only
        # its own available count: the rest of its row is -inf.
        best = torch.topk(logit, max(0, min(k, int(available.max(initial=0)))), dim=1)
        rows = best.indices.cpu().numpy()
        if self.ranker is not None:
            scores = best.values.float().cpu().numpy()
            return [(rows[i, :n], scores[i, :n]) for i, n in enumerate(np.minimum(available, k).tolist())]
        # torch's CPU sigmoid takes a scalar path for short tensors and a SIMD one for long ones, which
        # differ in the last bit; padding every row to whole SIMD widths makes a user's scores the same
        # in a block of one as in a block of many.
        width = -(-max(best.values.shape[1], 1) // SCALE_WIDTH) * SCALE_WIDTH
        padded = best.values.new_zeros(len(user_rows), width)
        padded[:, : best.values.shape[1]] = best.values
        scores = self._scale(padded)[:, : best.values.shape[1]].float().cpu().numpy()
        return [(rows[i, :n], scores[i, :n]) for i, n in enumerate(np.minimum(available, k).tolist())]
