"""The ranker (model/ranking.py), its place in the serving core, and the measure of served lists (model/metrics.py)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from model import ranking
from model.artifact import load_artifact
from model.core import Recommender
from model.metrics import popular_top_k, top_k_metrics
from model.ranking import DotRanker, RankerConfig, RankTrainConfig, StepPlan, fit_ranker, softmax_loss, step_plan


@pytest.fixture(scope="module")
def rec(tiny_artifact) -> Recommender:
    """The serving core over the session's tiny artifact (rating model and ranker)."""
    return Recommender(load_artifact(tiny_artifact))


def test_the_ranker_reads_like_its_formula():
    torch.manual_seed(0)
    net = DotRanker(RankerConfig(n_users=5, n_movies=7, n_factors=3))
    torch.nn.init.normal_(net.mb.weight)
    users, movies = torch.tensor([0, 4, 2]), torch.tensor([6, 0, 3])
    expected = (net.u.weight[users] * net.m.weight[movies]).sum(1) + net.mb.weight[movies, 0]
    torch.testing.assert_close(net(users, movies), expected)


def test_recall_and_ndcg_by_hand():
    # User 0: relevant {1, 2} (ratings >= 4; movie 3 rated 3 is not), list [1, 9, 2]: both found, at ranks 1 and 3.
    # User 1: relevant {5}, list [4, 6]: nothing found. User 2 has no relevant rating and does not count.
    users = np.array([0, 0, 0, 1, 2])
    movies = np.array([1, 2, 3, 5, 7])
    ratings = np.array([4.0, 5.0, 3.0, 4.5, 2.0])
    lists = {0: np.array([1, 9, 2]), 1: np.array([4, 6]), 2: np.array([7])}
    got = top_k_metrics(lists, users, movies, ratings, k=3)
    ideal = 1 + 1 / np.log2(3)
    assert got["users"] == 2
    assert got["recall@3"] == pytest.approx((1.0 + 0.0) / 2)
    assert got["ndcg@3"] == pytest.approx(((1 + 1 / np.log2(4)) / ideal + 0.0) / 2)


def test_recall_caps_at_k_and_counts_a_movie_the_model_never_saw():
    users = np.zeros(4, dtype=np.int64)
    movies = np.array([1, 2, -1, -1])  # two held-out movies unknown to the model: relevant, never found
    ratings = np.full(4, 5.0)
    assert top_k_metrics({0: np.array([1, 2])}, users, movies, ratings, k=2)["recall@2"] == 1.0
    assert top_k_metrics({0: np.array([1, 2])}, users, movies, ratings, k=4)["recall@4"] == 0.5


def test_most_popular_skips_rated_and_rare_movies():
    train_users = np.array([0, 1, 1, 2, 2, 2, 0, 1, 2, 3])
    train_movies = np.array([0, 0, 1, 0, 1, 2, 3, 3, 3, 4])
    # counts: movie 0: 3, movie 3: 3, movie 1: 2, movie 2: 1, movie 4: 1
    lists = popular_top_k(train_users, train_movies, 5, np.array([0, 3]), k=3, min_count=2)
    assert lists[0].tolist() == [1]  # rated 0 and 3; 2 and 4 are rare
    assert lists[3].tolist() == [0, 3, 1]


def _planted(n_users=80, n_movies=60, seed=0):
    """Two tastes: even users pick from the first half of the catalogue, odd users from the second."""
    rng = np.random.default_rng(seed)
    users, movies = [], []
    for u in range(n_users):
        pool = np.arange(n_movies // 2) + (u % 2) * (n_movies // 2)
        picked = rng.choice(pool, 12, replace=False)
        users += [u] * len(picked)
        movies += picked.tolist()
    return np.array(users), np.array(movies), np.full(len(users), 5.0, dtype=np.float32)


@pytest.mark.parametrize("user_factors", ["free", "movies"])
def test_the_ranker_learns_who_picks_what(user_factors):
    """Fitted on planted tastes, each user's best unseen movies are from their own half."""
    users, movies, ratings = _planted()
    cfg = RankTrainConfig(epochs=30, users_per_step=8, lr=3e-2, wd=1e-3, n_factors=8, user_factors=user_factors)
    model, history, plan = fit_ranker(users, movies, ratings, 80, 60, cfg, torch.device("cpu"), seed=0, quiet=True)
    assert plan.user_factors == user_factors
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    with torch.no_grad():
        scores = model.u.weight @ model.m.weight.T + model.mb.weight.T
    scores[torch.from_numpy(users), torch.from_numpy(movies)] = -float("inf")
    top = scores.topk(5, dim=1).indices.numpy()
    own_half = (top >= 30) == (np.arange(80)[:, None] % 2 == 1)
    assert own_half.mean() > 0.9


def test_encoded_users_are_the_weighted_sum_of_their_movies_embeddings():
    """The served rows of an encoded ranker are its encoder over each user's movies, none dropped."""
    users, movies, ratings = _planted(n_users=20, n_movies=30)
    ratings[::3] = 2.0
    cfg = RankTrainConfig(epochs=2, users_per_step=8, n_factors=4, user_factors="movies")
    torch.manual_seed(1)
    encoder = ranking.MovieEncoder(30, 4)
    users_t = torch.from_numpy(users)
    order = torch.argsort(users_t, stable=True)
    indptr = torch.from_numpy(np.concatenate([[0], np.cumsum(np.bincount(users, minlength=20))]))
    weight = 1 + 4 * (torch.from_numpy(ratings) - 2.0) / 3.0
    model = DotRanker(RankerConfig(20, 30, 4))
    ranking._encode_users(model, encoder, indptr, torch.from_numpy(movies)[order], weight[order], torch.arange(20), 8)
    for u in (0, 7, 19):
        mine = users == u
        w = weight[torch.from_numpy(mine)]
        expected = (encoder.e.weight[torch.from_numpy(movies[mine])] * w[:, None]).sum(0) / w.norm()
        torch.testing.assert_close(model.u.weight[u], expected)
    assert fit_ranker(users, movies, ratings, 20, 30, cfg, torch.device("cpu"), quiet=True)[2].user_factors == "movies"


def test_the_loss_over_users_is_the_weighted_cross_entropy_of_each_rating():
    """One logits row per user gives the same loss as a softmax over the catalogue for every rating."""
    torch.manual_seed(0)
    model = DotRanker(RankerConfig(n_users=3, n_movies=7, n_factors=4))
    users = torch.tensor([0, 2])
    local, movies = torch.tensor([0, 0, 0, 1, 1]), torch.tensor([1, 4, 6, 0, 4])
    weight = torch.tensor([1.0, 5.0, 2.0, 3.0, 1.0])
    per_rating = users[local]
    logits = model.u(per_rating) @ model.m.weight.T + model.mb.weight.T
    expected = (torch.nn.functional.cross_entropy(logits, movies, reduction="none") * weight).sum() / weight.sum()
    got = softmax_loss(model, model.u(users), local, movies, weight).item()
    assert got == pytest.approx(expected.item(), rel=1e-6)


def test_larger_data_takes_more_users_a_step_within_the_logits_cap():
    """The ML-100K recipe as it is; 1M ratings keep its steps per epoch; ML-25M's catalogue caps the step."""
    cfg = RankTrainConfig(user_factors="free")
    assert step_plan(943, 1682, cfg) == StepPlan(32, 60, cfg.lr, 128, "free")
    assert step_plan(6502, 2362, cfg) == StepPlan(217, 60, pytest.approx(cfg.lr * 217 / 32), 128, "free")
    plan = step_plan(162_541, 59_047, cfg)
    assert plan.users_per_step * 59_047 <= ranking.MAX_LOGITS < (plan.users_per_step + 1) * 59_047
    assert plan.epochs == ranking.MIN_EPOCHS
    assert plan.lr == ranking.MAX_LR < cfg.lr * plan.users_per_step / cfg.users_per_step
    assert step_plan(162_541, 59_047, RankTrainConfig(lr=0.1)).lr == 0.1


def test_many_users_are_encoded_from_their_movies_with_fewer_epochs():
    """Left to the plan, ML-100K's 943 users get free rows and 60 epochs; 1M ratings' 6.5k users are encoded."""
    auto = RankTrainConfig()
    small, large = step_plan(943, 1682, auto), step_plan(ranking.ENCODE_USERS, 2362, auto)
    assert (small.user_factors, small.epochs) == ("free", ranking.FREE_EPOCHS)
    assert (large.user_factors, large.epochs) == ("movies", ranking.ENCODED_EPOCHS)
    assert step_plan(943, 1682, RankTrainConfig(user_factors="movies", epochs=25)).epochs == 25
    with pytest.raises(ValueError, match="user_factors must be one of auto, free, movies"):
        step_plan(943, 1682, RankTrainConfig(user_factors="users"))


def test_a_large_catalogue_gets_fewer_factors_unless_they_are_given():
    """Factors left to the plan keep a top-K within TOPK_PRODUCTS; factors the recipe names are kept."""
    auto = RankTrainConfig()
    assert step_plan(671, 9_066, auto).n_factors == ranking.MAX_FACTORS
    large = step_plan(162_541, 59_047, auto).n_factors
    assert large == 64 and large * 59_047 <= ranking.TOPK_PRODUCTS
    assert step_plan(162_541, 59_047, RankTrainConfig(n_factors=96)).n_factors == 96
    model, _, plan = fit_ranker(
        np.arange(4), np.arange(4), np.ones(4), 4, 4, RankTrainConfig(epochs=1), torch.device("cpu"), quiet=True
    )
    assert model.u.weight.shape == (4, plan.n_factors) == (4, ranking.MAX_FACTORS)


def test_rating_weights_favour_what_users_liked():
    """The same picks, but each user's second movie is rated 1: with rating weights it ranks below the first."""
    users = np.repeat(np.arange(40), 2)
    movies = np.tile([0, 1], 40)
    ratings = np.tile([5.0, 1.0], 40).astype(np.float32)
    cfg = RankTrainConfig(epochs=20, users_per_step=8, lr=3e-2, wd=1e-4, n_factors=4)
    model, _, _ = fit_ranker(users, movies, ratings, 41, 3, cfg, torch.device("cpu"), quiet=True)
    new_user = torch.tensor([40, 40])
    s = model(new_user, torch.tensor([0, 1]))
    assert s[0] > s[1]
    flat, _, _ = fit_ranker(
        users, movies, ratings, 41, 3, dataclasses.replace(cfg, rating_power=0.0), torch.device("cpu"), quiet=True
    )
    gap = [abs(float((m.mb.weight[0, 0] - m.mb.weight[1, 0]).detach())) for m in (flat, model)]
    assert gap[0] < gap[1]


def test_top_k_ranks_by_the_ranker_and_its_torchscript_agrees(rec):
    """Served lists are the TorchScript ranker's best unrated movies, with its scores."""
    ranker = rec.artifact.ranker
    assert ranker is not None
    n_movies = len(rec.artifact.movies)
    for user in (0, 11, 42):
        with torch.no_grad():
            exact = ranker(torch.full((n_movies,), user), torch.arange(n_movies)).numpy()
        exact[rec.artifact.rated_by(user)] = -np.inf
        rows, scores = rec.recommend(user, 6)
        np.testing.assert_allclose(scores, exact[rows], atol=1e-5, rtol=0)
        np.testing.assert_allclose(scores, np.sort(exact)[::-1][:6], atol=1e-5, rtol=0)


def test_an_artifact_without_a_ranker_ranks_by_predicted_rating(rec, tiny_artifact, tmp_path):
    """A format v2 artifact (no ranker.pt) loads, and keeps serving the lists it always did."""
    copy = Path(shutil.copytree(tiny_artifact, tmp_path / "v2"))
    meta = json.loads((copy / "metadata.json").read_text())
    del meta["ranker"], meta["files"]["ranker.pt"]
    meta["format_version"] = 2
    (copy / "metadata.json").write_text(json.dumps(meta))
    (copy / "ranker.pt").unlink()
    legacy = Recommender(load_artifact(copy))
    assert legacy.ranker is None
    n_movies = len(rec.artifact.movies)
    exact = rec.predict_exact(np.full(n_movies, 3), np.arange(n_movies))
    exact[rec.artifact.rated_by(3)] = -np.inf
    rows, scores = legacy.recommend(3, 5)
    np.testing.assert_allclose(scores, np.sort(exact)[::-1][:5], atol=1e-5, rtol=0)


class _Shifted(DotRanker):
    """A ranker whose forward is not its factors' formula."""

    def forward(self, users: torch.Tensor, movies: torch.Tensor) -> torch.Tensor:
        return (self.u(users) * self.m(movies)).sum(1) + self.mb(movies).squeeze(1) + 0.01


def test_a_ranker_that_disagrees_with_its_factors_is_refused(rec):
    shifted = _Shifted(RankerConfig(**rec.artifact.metadata["ranker"]["net"]))
    shifted.load_state_dict(rec.artifact.ranker.state_dict())
    with pytest.raises(ValueError, match="TorchScript ranker"):
        Recommender(dataclasses.replace(rec.artifact, ranker=torch.jit.script(shifted.eval())))
