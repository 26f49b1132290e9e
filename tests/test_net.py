"""EmbeddingNet: shapes, output range, TorchScript parity, the bias switch and dropout."""

from __future__ import annotations

import pytest
import torch

from model.net import EmbeddingNet, NetConfig


def make_net(bias: bool = True, p1: float = 0.3, p2: float = 0.3, seed: int = 0) -> EmbeddingNet:
    """A small net over 6 users x 9 movies on a 1..5 scale."""
    torch.manual_seed(seed)
    return EmbeddingNet(NetConfig(6, 9, n_factors=4, nh=8, p1=p1, p2=p2, y_min=1.0, y_max=5.0, bias=bias))


def all_pairs(n_users: int = 6, n_movies: int = 9) -> tuple[torch.Tensor, torch.Tensor]:
    """Every (user, movie) row pair."""
    users = torch.arange(n_users).repeat_interleave(n_movies)
    movies = torch.arange(n_movies).repeat(n_users)
    return users, movies


def scale_weights(net: torch.nn.Module, factor: float) -> None:
    """Multiply every parameter (bias embeddings included) by factor."""
    with torch.no_grad():
        for p in net.parameters():
            p.normal_().mul_(factor)


@pytest.mark.parametrize("batch", [1, 5, 54])
def test_output_shape(batch):
    net = make_net().eval()
    users, movies = all_pairs()
    out = net(users[:batch], movies[:batch])
    assert out.shape == (batch,) and out.dtype == torch.float32


def test_forward_matches_the_formula():
    net = make_net().eval()
    scale_weights(net, 0.5)
    users, movies = all_pairs()
    x = torch.cat([net.u.weight[users], net.m.weight[movies]], dim=1)
    logit = torch.relu(x @ net.lin1.weight.T + net.lin1.bias) @ net.lin2.weight[0] + net.lin2.bias[0]
    logit = logit + net.ub.weight[users, 0] + net.mb.weight[movies, 0]
    expected = torch.sigmoid(logit) * 5.0 + 0.5
    torch.testing.assert_close(net(users, movies), expected)


def test_fused_adds_a_dot_product_at_the_logit_and_scripts_the_same():
    torch.manual_seed(0)
    fused = EmbeddingNet(NetConfig(6, 9, n_factors=4, nh=8, arch="fused", n_dot=3)).eval()
    scale_weights(fused, 0.5)
    plain = EmbeddingNet(NetConfig(6, 9, n_factors=4, nh=8)).eval()
    plain.load_state_dict(
        {k: v for k, v in fused.state_dict().items() if not k.startswith(("ud.", "md."))}, strict=False
    )
    users, movies = all_pairs()
    logit = lambda out: torch.logit((out - 0.5) / 5.0, eps=0)  # noqa: E731 - the scaled sigmoid's inverse
    dot = (fused.ud.weight[users] * fused.md.weight[movies]).sum(1)
    torch.testing.assert_close(logit(fused(users, movies)), logit(plain(users, movies)) + dot, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(torch.jit.script(fused)(users, movies), fused(users, movies))


@pytest.mark.parametrize(("arch", "n_dot"), [("embedding-net", 0), ("fused", 3)])
def test_no_zero_width_table_reaches_autograd(arch, n_dot):
    """CUDA's embedding backward crashes on a zero-width table (an illegal memory access), so the
    lesson's net must train without one: its empty dot tables stay in the artifact but get no gradient."""
    net = EmbeddingNet(NetConfig(6, 9, n_factors=4, nh=8, arch=arch, n_dot=n_dot))
    trained = [name for name, p in net.named_parameters() if p.requires_grad]
    assert all(dict(net.named_parameters())[name].numel() > 0 for name in trained)
    assert ("ud.weight" in trained) == (n_dot > 0) and ("md.weight" in trained) == (n_dot > 0)
    users, movies = all_pairs()
    (net(users, movies) - 4.0).pow(2).mean().backward()
    assert (net.ud.weight.grad is None) == (n_dot == 0)
    assert {"ud.weight", "md.weight"} <= set(torch.jit.script(net.eval()).state_dict())


@pytest.mark.parametrize(("arch", "n_dot"), [("embedding-net", 2), ("fused", 0), ("mlp", 0)])
def test_an_arch_and_dot_width_that_do_not_go_together_are_refused(arch, n_dot):
    with pytest.raises(ValueError, match="arch"):
        EmbeddingNet(NetConfig(6, 9, arch=arch, n_dot=n_dot))


@pytest.mark.parametrize("factor", [0.01, 0.3, 1.0])
def test_output_strictly_inside_the_range(factor):
    net = make_net().eval()
    scale_weights(net, factor)
    out = net(*all_pairs())
    assert torch.isfinite(out).all()
    assert (out > 0.5).all() and (out < 5.5).all(), (out.min(), out.max())


def test_extreme_weights_stay_within_the_range():
    # float32 sigmoid saturates to exactly 0 or 1 once |logit| > ~17, so extreme weights reach the
    # bounds themselves; the guarantee that holds is the closed interval, with no NaN or overflow.
    net = make_net().eval()
    scale_weights(net, 1e4)
    out = net(*all_pairs())
    assert torch.isfinite(out).all()
    assert (out >= 0.5).all() and (out <= 5.5).all(), (out.min(), out.max())
    assert out.min() < 3.0 < out.max()  # both tails are exercised


@pytest.mark.parametrize("bias", [True, False])
def test_torchscript_matches_eager_in_eval(bias):
    net = make_net(bias=bias).eval()
    scale_weights(net, 0.5)
    if not bias:
        with torch.no_grad():
            net.ub.weight.zero_()
            net.mb.weight.zero_()
    scripted = torch.jit.script(net)
    users, movies = all_pairs()
    with torch.no_grad():
        assert torch.equal(scripted(users, movies), net(users, movies))


def test_no_bias_keeps_bias_embeddings_zero_and_frozen():
    net = make_net(bias=False)
    assert not net.ub.weight.requires_grad and not net.mb.weight.requires_grad
    assert net.u.weight.requires_grad and net.lin1.weight.requires_grad
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=0.1, weight_decay=0.1)
    users, movies = all_pairs()
    for _ in range(3):
        loss = (net(users, movies) - 4.0).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert net.ub.weight.grad is None and net.mb.weight.grad is None
    assert torch.count_nonzero(net.ub.weight) == 0 and torch.count_nonzero(net.mb.weight) == 0
    scripted = torch.jit.script(net.eval())
    assert set(scripted.state_dict()) == set(make_net(bias=True).state_dict())
    assert torch.count_nonzero(scripted.state_dict()["ub.weight"]) == 0


def test_bias_embeddings_learn_when_enabled():
    net = make_net(bias=True)
    assert net.ub.weight.requires_grad and net.mb.weight.requires_grad
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    loss = (net(*all_pairs()) - 5.0).pow(2).mean()
    loss.backward()
    opt.step()
    assert torch.count_nonzero(net.ub.weight) > 0


def test_dropout_active_in_train_mode_only():
    net = make_net(p1=0.5, p2=0.5)
    scale_weights(net, 0.5)
    users, movies = all_pairs()
    net.train()
    with torch.no_grad():
        a, b = net(users, movies), net(users, movies)
    assert not torch.equal(a, b)
    net.eval()
    with torch.no_grad():
        c, d = net(users, movies), net(users, movies)
    assert torch.equal(c, d)


def test_no_dropout_means_train_equals_eval():
    net = make_net(p1=0.0, p2=0.0)
    scale_weights(net, 0.5)
    users, movies = all_pairs()
    with torch.no_grad():
        train_out = net.train()(users, movies)
        eval_out = net.eval()(users, movies)
    assert torch.equal(train_out, eval_out)


def test_config_round_trips_through_dict():
    cfg = NetConfig(6, 9, n_factors=4, nh=8, bias=False)
    assert NetConfig(**cfg.to_dict()) == cfg
