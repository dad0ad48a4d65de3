"""Meta-LSTM against hand-written float64 references: gradient preprocessing, the cell update, the
two-layer meta-learner, and a whole task (T learner steps, support-statistics batch norm, meta-gradient)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tests._helpers.episodes import make_episode
from tests._helpers.inner_loop_reference import N_WAY, tiny_backbone
from tests._helpers.model_based import assert_meta_training_helps
from torch import Tensor, nn

from medmeta.errors import ConfigError
from medmeta.methods import build_method
from medmeta.methods.model_based.meta_lstm import (
    MetaLearner,
    MetaLSTM,
    MetaLSTMOptions,
    lstm_columns,
    metalstm_update,
    preprocess_gradient,
)
from medmeta.methods.model_based.support_norm import support_statistics
from medmeta.tasks.episode import Support

TOL = 1e-10


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _preprocess(x: float, p: float) -> tuple[float, float]:
    if abs(x) >= math.exp(-p):
        return math.log(abs(x)) / p, math.copysign(1.0, x)
    return -1.0, math.exp(p) * x


def test_gradient_preprocessing_matches_the_formula_on_both_sides_of_the_threshold() -> None:
    # e^-10 = 4.54e-5: the first three are large, the last three small (0 included)
    x = torch.tensor([2.0, -0.5, 1e-3, -3e-5, 1e-6, 0.0], dtype=torch.float64)
    got = preprocess_gradient(x, 10.0)
    expected = [
        (math.log(2.0) / 10, 1.0),
        (math.log(0.5) / 10, -1.0),
        (math.log(1e-3) / 10, 1.0),
        (-1.0, -3e-5 * math.exp(10.0)),
        (-1.0, 1e-6 * math.exp(10.0)),
        (-1.0, 0.0),
    ]
    assert got.shape == (6, 2)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-15)
    # p moves the threshold: with p = 1, 0.5 >= e^-1 is large and 0.1 < e^-1 is small
    torch.testing.assert_close(
        preprocess_gradient(torch.tensor([0.5, -0.1], dtype=torch.float64), 1.0),
        torch.tensor([[math.log(0.5), 1.0], [-1.0, -0.1 * math.e]], dtype=torch.float64),
    )


def test_the_update_is_the_lstm_cell_rule() -> None:
    theta = torch.tensor([1.0, 2.0, -3.0], dtype=torch.float64)
    grad = torch.tensor([0.5, -1.0, 4.0], dtype=torch.float64)
    forget = torch.tensor([0.9, 1.0, 0.5], dtype=torch.float64)
    inputs = torch.tensor([0.1, 0.2, 0.25], dtype=torch.float64)
    got = metalstm_update(theta, grad, forget, inputs)
    # c_t = f_t * c_{t-1} - i_t * grad, by hand
    torch.testing.assert_close(got, torch.tensor([0.85, 2.2, -2.5], dtype=torch.float64), rtol=0, atol=1e-15)


def test_column_lstm_equals_torch_lstm_cell() -> None:
    torch.manual_seed(0)
    cell = nn.LSTMCell(4, 5).double()
    x, h, c = (torch.randn(7, k, dtype=torch.float64) for k in (4, 5, 5))
    h_ref, c_ref = cell(x, (h, c))
    h_got, c_got = lstm_columns(x.t(), h.t(), c.t(), cell)
    torch.testing.assert_close(h_got.t(), h_ref, rtol=0, atol=1e-14)
    torch.testing.assert_close(c_got.t(), c_ref, rtol=0, atol=1e-14)


def _reference_meta_learner_steps(
    learner: MetaLearner, theta: list[float], grads: list[list[float]], losses: list[float], p: float
) -> list[list[float]]:
    """Two-layer meta-learner, one coordinate at a time with plain floats (gate order i, f, g, o)."""
    w_ih, w_hh = learner.lstm.weight_ih.tolist(), learner.lstm.weight_hh.tolist()
    b = (learner.lstm.bias_ih + learner.lstm.bias_hh).tolist()
    w_f, b_f = learner.forget.weight[0].tolist(), float(learner.forget.bias.detach())
    w_i, b_i = learner.input_gate.weight[0].tolist(), float(learner.input_gate.bias.detach())
    hidden = learner.lstm.hidden_size
    n = len(theta)
    h = [[0.0] * hidden for _ in range(n)]
    c = [[0.0] * hidden for _ in range(n)]
    f_prev, i_prev = [0.0] * n, [0.0] * n
    out = []
    for grad, loss in zip(grads, losses, strict=True):
        new_theta = []
        for j in range(n):
            x = [*_preprocess(loss, p), *_preprocess(grad[j], p)]
            z = [
                b[r]
                + sum(w_ih[r][k] * x[k] for k in range(4))
                + sum(w_hh[r][k] * h[j][k] for k in range(hidden))
                for r in range(4 * hidden)
            ]
            gi = [_sigmoid(v) for v in z[:hidden]]
            gf = [_sigmoid(v) for v in z[hidden : 2 * hidden]]
            gg = [math.tanh(v) for v in z[2 * hidden : 3 * hidden]]
            go = [_sigmoid(v) for v in z[3 * hidden :]]
            c[j] = [gf[k] * c[j][k] + gi[k] * gg[k] for k in range(hidden)]
            h[j] = [go[k] * math.tanh(c[j][k]) for k in range(hidden)]
            zf = (
                b_f
                + sum(w_f[k] * h[j][k] for k in range(hidden))
                + w_f[hidden] * theta[j]
                + w_f[hidden + 1] * f_prev[j]
            )
            zi = (
                b_i
                + sum(w_i[k] * h[j][k] for k in range(hidden))
                + w_i[hidden] * theta[j]
                + w_i[hidden + 1] * i_prev[j]
            )
            f_prev[j], i_prev[j] = _sigmoid(zf), _sigmoid(zi)
            new_theta.append(f_prev[j] * theta[j] - i_prev[j] * grad[j])
        theta = new_theta
        out.append(theta)
    return out


def test_meta_learner_steps_match_a_per_coordinate_loop() -> None:
    torch.manual_seed(0)
    learner = MetaLearner(hidden=3).double()
    with torch.no_grad():  # gate weights large enough that every input matters
        learner.forget.weight.uniform_(-1, 1)
        learner.input_gate.weight.uniform_(-1, 1)
    theta0 = [0.3, -1.2, 0.05, 2.0]
    grads = [[0.4, -2e-5, 1e-3, -0.7], [-0.1, 0.3, 0.0, 5.0], [1e-6, -0.2, 0.6, 0.01]]
    losses = [1.3, 0.9, 2e-5]
    expected = _reference_meta_learner_steps(learner, theta0, grads, losses, 10.0)
    theta = torch.tensor(theta0, dtype=torch.float64)
    state = learner.initial_state(theta)
    for step, (grad, loss) in enumerate(zip(grads, losses, strict=True)):
        g, lo = torch.tensor(grad, dtype=torch.float64), torch.tensor(loss, dtype=torch.float64)
        theta, state = learner.step(theta, g, lo, state, 10.0)
        torch.testing.assert_close(theta, torch.tensor(expected[step], dtype=torch.float64), rtol=0, atol=TOL)


def test_the_gates_start_near_plain_gradient_descent_with_a_small_rate() -> None:
    learner = MetaLearner(hidden=20)
    assert 4.0 <= float(learner.forget.bias) <= 6.0 and -5.0 <= float(learner.input_gate.bias) <= -4.0
    assert float(learner.forget.weight.abs().max()) <= 0.01


# --- a whole task against an independent float64 reference ------------------------------------------------
def _conv4(
    p: dict[str, Tensor], x: Tensor, stats: dict[int, tuple[Tensor, Tensor]] | None, record: bool
) -> Tensor:
    """Conv4 from a ``backbone.*`` dict; batch norm by the batch's statistics (recorded into `stats` when
    `record`) or by the given `stats` (layer index -> mean, variance)."""
    for i in range(4):
        conv, norm = f"backbone.features.{4 * i}", f"backbone.features.{4 * i + 1}"
        x = F.conv2d(x, p[f"{conv}.weight"], p[f"{conv}.bias"], padding=1)
        if record or stats is None:
            mean = x.mean(dim=(0, 2, 3))
            var = (x - mean[None, :, None, None]).pow(2).mean(dim=(0, 2, 3))
            if record and stats is not None:
                stats[i] = (mean.detach(), var.detach())
        else:
            mean, var = stats[i]
        x = (x - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + 1e-5)
        x = x * p[f"{norm}.weight"][None, :, None, None] + p[f"{norm}.bias"][None, :, None, None]
        x = F.max_pool2d(F.relu(x), 2)
    return x.flatten(1)


def _reference_task_logits(method: MetaLSTM, support: Support, query: Tensor, steps: int) -> Tensor:
    """T learner updates with detached gradient and loss inputs, then queries normalised by the support's
    statistics under the final parameters; every formula written out here."""
    params = {n: p for n, p in method.named_parameters() if n.startswith(("backbone.", "head."))}
    names = list(params)
    ml = method.meta_learner
    w_f, w_i = ml.forget.weight[0], ml.input_gate.weight[0]
    hidden = ml.lstm.hidden_size
    theta = params
    h = c = f_prev = i_prev = None
    for _ in range(steps):
        leaves = {n: v.detach().requires_grad_(True) for n, v in theta.items()}
        logits = F.linear(
            _conv4(leaves, support.images, None, False), leaves["head.weight"], leaves["head.bias"]
        )
        loss = F.cross_entropy(logits[:, : support.n_way], support.labels)
        grads = torch.autograd.grad(loss, [leaves[n] for n in names], allow_unused=True)
        g = torch.cat(
            [
                (torch.zeros_like(leaves[n]) if d is None else d).reshape(-1)
                for n, d in zip(names, grads, strict=True)
            ]
        )
        flat = torch.cat([theta[n].reshape(-1) for n in names])
        n_coord = flat.shape[0]
        big = g.abs() >= math.exp(-10)
        pre_g = torch.stack(
            [
                torch.where(big, g.abs().clamp_min(1e-300).log() / 10, -1.0),
                torch.where(big, g.sign(), math.exp(10) * g),
            ],
            1,
        )
        pre_l = torch.tensor(_preprocess(float(loss), 10.0), dtype=flat.dtype).expand(n_coord, 2)
        x = torch.cat([pre_l, pre_g], 1)  # (n, 4)
        if h is None:
            h = c = flat.new_zeros(n_coord, hidden)
            f_prev = i_prev = flat.new_zeros(n_coord)
        z = x @ ml.lstm.weight_ih.t() + h @ ml.lstm.weight_hh.t() + ml.lstm.bias_ih + ml.lstm.bias_hh
        zi, zf, zg, zo = z.split(hidden, 1)
        c = torch.sigmoid(zf) * c + torch.sigmoid(zi) * torch.tanh(zg)
        h = torch.sigmoid(zo) * torch.tanh(c)
        f = torch.sigmoid(h @ w_f[:hidden] + w_f[hidden] * flat + w_f[hidden + 1] * f_prev + ml.forget.bias)
        i = torch.sigmoid(
            h @ w_i[:hidden] + w_i[hidden] * flat + w_i[hidden + 1] * i_prev + ml.input_gate.bias
        )
        f_prev, i_prev = f, i
        flat = f * flat - i * g
        pieces = flat.split([params[n].numel() for n in names])
        theta = {n: v.view(params[n].shape) for n, v in zip(names, pieces, strict=True)}
    stats: dict[int, tuple[Tensor, Tensor]] = {}
    _conv4({n: v.detach() for n, v in theta.items()}, support.images, stats, True)
    features = _conv4(theta, query, stats, False)
    return F.linear(features, theta["head.weight"][: support.n_way], theta["head.bias"][: support.n_way])


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_a_task_and_its_meta_gradient_match_an_unrolled_float64_reference(mode: str) -> None:
    torch.manual_seed(0)
    method = MetaLSTM(tiny_backbone(), MetaLSTMOptions(n_way=4, inner_steps=3, hidden=4)).double()
    method.train(mode == "train")
    with torch.no_grad():  # a faster inner loop than the paper's start, so that three steps move the learner
        method.meta_learner.input_gate.bias.fill_(-1.0)
    ep = make_episode(n_way=N_WAY, n_shot=2, n_query=3, shape=(1, 16, 16), dtype=torch.float64)
    got = method.adapt(ep.support).predict(ep.query_images)
    ref = _reference_task_logits(method, ep.support, ep.query_images, 3)
    torch.testing.assert_close(got, ref, rtol=0, atol=TOL)
    params = [p for _, p in method.named_parameters()]
    got_grads = torch.autograd.grad(F.cross_entropy(got, ep.query_labels), params)
    ref_grads = torch.autograd.grad(F.cross_entropy(ref, ep.query_labels), params)
    for (name, _), a, b in zip(method.named_parameters(), got_grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9, msg=name)
    assert float(got_grads[0].abs().max()) > 0  # theta_0 of the backbone is meta-learned


def test_queries_are_normalised_with_the_support_statistics_one_image_at_a_time() -> None:
    method = build_method("meta_lstm", tiny_backbone(), {"n_way": 3, "inner_steps": 2}).double().eval()
    ep = make_episode(n_way=3, n_shot=2, n_query=3, shape=(1, 16, 16), dtype=torch.float64)
    predictor = method.adapt(ep.support)
    # the support images get the features they had with batch statistics under theta_T
    batch = method.classify(predictor.params, method.features(predictor.params, ep.support_images), 3)
    torch.testing.assert_close(predictor.predict(ep.support_images), batch, rtol=0, atol=1e-12)
    together = predictor.predict(ep.query_images)
    alone = torch.cat([predictor.predict(ep.query_images[i : i + 1]) for i in range(9)])
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-12)


def test_training_mode_adaptation_never_touches_the_running_statistics() -> None:
    method = build_method("meta_lstm", tiny_backbone(), {"n_way": 3}).double().train()
    before = {n: b.clone() for n, b in method.named_buffers()}
    method.episode_loss(make_episode(n_way=3, shape=(1, 16, 16), dtype=torch.float64)).backward()
    for n, b in method.named_buffers():
        assert torch.equal(b, before[n]), n


def test_eval_mode_takes_eval_steps_and_training_takes_inner_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    method = build_method(
        "meta_lstm", tiny_backbone(), {"n_way": 3, "inner_steps": 2, "eval_steps": 4}
    ).double()
    calls: list[int] = []
    original = method.support_gradient
    monkeypatch.setattr(method, "support_gradient", lambda p, s: calls.append(1) or original(p, s))
    ep = make_episode(n_way=3, shape=(1, 16, 16), dtype=torch.float64)
    method.train().adapt(ep.support)
    assert len(calls) == 2
    with torch.no_grad():
        method.eval().adapt(ep.support)
    assert len(calls) == 6


def test_head_only_adaptation_keeps_the_backbone_at_its_meta_learned_values() -> None:
    method = build_method("meta_lstm", tiny_backbone(), {"n_way": 3, "adapt": "head"}).double().eval()
    assert method.adapted == ("head.weight", "head.bias")
    with torch.no_grad():
        params = method.adapt(make_episode(n_way=3, shape=(1, 16, 16), dtype=torch.float64).support).params
    for n, p in method.named_parameters():
        if n.startswith("backbone."):
            assert params[n] is p, n
    assert not torch.equal(params["head.weight"], method.head.weight)


def test_bad_options_and_too_many_classes_are_refused_with_the_fix() -> None:
    with pytest.raises(ConfigError, match="adapt='nope'"):
        build_method("meta_lstm", tiny_backbone(), {"adapt": "nope"})
    with pytest.raises(ConfigError, match="inner_steps"):
        build_method("meta_lstm", tiny_backbone(), {"inner_steps": 0})
    method = build_method("meta_lstm", tiny_backbone(), {"n_way": 2}).double()
    with pytest.raises(ConfigError, match=r"set the method option n_way=3"):
        method.adapt(make_episode(n_way=3, shape=(1, 16, 16), dtype=torch.float64).support)


def test_support_statistics_refuse_a_batch_norm_layer_run_twice() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)
            self.norm = nn.BatchNorm2d(2)

        def forward(self, x: Tensor) -> Tensor:
            return self.norm(self.norm(self.conv(x))).flatten(1)

    net = Twice()
    params = dict(net.named_parameters())
    with pytest.raises(ValueError, match="'norm' runs twice"):
        support_statistics(net, params, dict(net.named_buffers()), torch.randn(4, 1, 5, 5))


@pytest.mark.data
def test_a_few_dozen_episodes_on_blood_cells_beat_chance_on_unseen_cells(data_dir: Path) -> None:
    assert_meta_training_helps(data_dir, "meta_lstm", {"inner_steps": 5}, episodes=40, lr=3e-3)
