"""genlab.train: schedule, weight-decay groups, clipping, evaluation calls,
reproducibility, errors and the History record."""

import json
import math

import matplotlib
import pytest
import torch
from matplotlib.figure import Figure
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from genlab.train import History, TrainConfig, clip_gradients, lr_at, parameter_groups, train

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
TRUE_WEIGHT = torch.tensor([[2.0, -1.0, 0.5]])
TRUE_BIAS = 0.3


def regression_batches(step, generator):
    """A fresh noiseless batch of y = x @ w.T + b; the step number rides along."""
    x = torch.randn(32, 3, generator=generator)  # (B, 3)
    return {"x": x, "y": x @ TRUE_WEIGHT.T + TRUE_BIAS, "step": torch.tensor(step)}


def mse(model, batch):
    return nn.functional.mse_loss(model(batch["x"]), batch["y"])


def new_regression_model(init_seed=0):
    model = nn.Linear(3, 1)
    with torch.no_grad():  # explicit, seeded init: the caller's business
        init = torch.Generator().manual_seed(init_seed)
        model.weight.copy_(torch.randn(1, 3, generator=init))
        model.bias.zero_()
    return model


def quiet(**overrides):
    settings = dict(steps=60, lr=0.05, weight_decay=0.0, seed=0)
    settings.update(overrides)
    return TrainConfig(**settings)


@pytest.mark.parametrize("device", DEVICES)
def test_linear_regression_converges(device):
    model = new_regression_model()
    history = train(model, regression_batches, mse, quiet(steps=300, warmup_steps=10, device=device),
                    progress=False)
    assert history.train_loss[0] > 1.0
    assert history.train_loss[-1] < 1e-4
    torch.testing.assert_close(model.weight.detach().cpu(), TRUE_WEIGHT, atol=1e-2, rtol=0)
    assert next(model.parameters()).device.type == device


def test_lr_schedule_key_values():
    cfg = TrainConfig(steps=101, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1)  # warmup: (step + 1) / W
    assert lr_at(4, cfg) == pytest.approx(0.5)
    assert lr_at(9, cfg) == pytest.approx(1.0)  # warmup reaches the peak...
    assert lr_at(10, cfg) == pytest.approx(1.0)  # ...where the cosine starts
    assert lr_at(55, cfg) == pytest.approx(0.55)  # half-way down: (peak + floor) / 2
    assert lr_at(100, cfg) == pytest.approx(0.1)  # the last step sits on the floor
    assert lr_at(500, cfg) == pytest.approx(0.1)
    decay = [lr_at(step, cfg) for step in range(10, 101)]
    assert all(a >= b for a, b in zip(decay, decay[1:]))
    no_warmup = TrainConfig(steps=5, lr=2.0, min_lr_ratio=0.0)
    assert [lr_at(step, no_warmup) for step in range(5)] == pytest.approx(
        [2.0, 2 * 0.5 * (1 + math.cos(math.pi / 4)), 1.0, 2 * 0.5 * (1 - math.cos(math.pi / 4)), 0.0])
    assert lr_at(0, TrainConfig(steps=1, lr=0.5)) == 0.5


def test_history_records_the_schedule():
    cfg = quiet(steps=30, warmup_steps=5, lr=0.01)
    history = train(new_regression_model(), regression_batches, mse, cfg, progress=False)
    assert history.steps == list(range(30))
    assert history.lr == pytest.approx([lr_at(step, cfg) for step in range(30)])
    assert len(history.train_loss) == len(history.grad_norm) == 30
    assert all(norm > 0 for norm in history.grad_norm)


def test_weight_decay_groups():
    class TinyLM(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(10, 4)
            self.ln = nn.LayerNorm(4)
            self.mlp = nn.Linear(4, 4)
            self.head = nn.Linear(4, 10, bias=False)
            self.head.weight = self.wte.weight  # tied to the embedding
            self.frozen = nn.Linear(4, 4)
            self.frozen.requires_grad_(False)

    model = TinyLM()
    decayed, not_decayed = parameter_groups(model, weight_decay=0.1)
    assert decayed["weight_decay"] == 0.1 and not_decayed["weight_decay"] == 0.0
    ids = lambda params: {id(p) for p in params}  # noqa: E731
    assert ids(decayed["params"]) == {id(model.mlp.weight)}
    assert ids(not_decayed["params"]) == {id(model.wte.weight), id(model.ln.weight),
                                          id(model.ln.bias), id(model.mlp.bias)}
    assert len(not_decayed["params"]) == 4  # the tied table appears once


def test_clip_gradients_bounds_the_norm():
    weights = [nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(2, 2))]
    weights[0].grad = torch.tensor([3.0, 4.0, 0.0])
    weights[1].grad = torch.full((2, 2), 6.0)  # global norm sqrt(25 + 144) = 13
    assert clip_gradients(weights, 1.0) == pytest.approx(13.0)
    global_norm = torch.cat([w.grad.flatten() for w in weights]).norm()
    assert float(global_norm) == pytest.approx(1.0, rel=1e-5)
    assert clip_gradients(weights, None) == pytest.approx(1.0, rel=1e-5)  # no clipping: unchanged
    assert clip_gradients(weights, 5.0) == pytest.approx(1.0, rel=1e-5)  # below the limit: unchanged


def test_train_clips_before_each_update():
    norms_seen_by_optimizer = []

    def record_norm(optimizer, args, kwargs):
        grads = [p.grad.flatten() for group in optimizer.param_groups for p in group["params"]]
        norms_seen_by_optimizer.append(float(torch.cat(grads).norm()))

    def huge_loss(model, batch):
        return 1e4 * mse(model, batch)

    handle = register_optimizer_step_pre_hook(record_norm)
    try:
        history = train(new_regression_model(), regression_batches, huge_loss,
                        quiet(steps=10, grad_clip=0.5), progress=False)
    finally:
        handle.remove()
    assert len(norms_seen_by_optimizer) == 10
    assert max(norms_seen_by_optimizer) <= 0.5 * (1 + 1e-5)
    assert min(history.grad_norm) > 0.5  # recorded before clipping


@pytest.mark.parametrize("steps, eval_every, expected", [
    (200, 50, [50, 100, 150, 200]),
    (120, 50, [50, 100, 120]),
    (30, None, [30]),
])
def test_eval_fn_called_at_the_right_steps(steps, eval_every, expected):
    calls = []

    def eval_fn(model):
        calls.append((model.training, torch.is_grad_enabled()))
        return {"loss": torch.tensor(0.5), "accuracy": 1}

    model = new_regression_model()
    history = train(model, regression_batches, mse, quiet(steps=steps, eval_every=eval_every),
                    eval_fn=eval_fn, progress=False)
    assert [step for step, _ in history.evals] == expected
    assert calls == [(False, False)] * len(expected)  # eval mode, no autograd
    assert model.training
    assert history.evals[-1][1] == {"loss": 0.5, "accuracy": 1.0}
    assert all(type(value) is float for _, metrics in history.evals for value in metrics.values())


def dropout_mlp(init_seed=0):
    model = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 1))
    init = torch.Generator().manual_seed(init_seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(0.3 * torch.randn(parameter.shape, generator=init))
    return model


def test_same_seed_same_history_whatever_the_global_rng():
    cfg = quiet(steps=25)
    torch.manual_seed(1)
    first = train(dropout_mlp(), regression_batches, mse, cfg, progress=False)
    torch.manual_seed(2)
    model = dropout_mlp()
    state_before = torch.random.get_rng_state()
    second = train(model, regression_batches, mse, cfg, progress=False)
    assert torch.equal(torch.random.get_rng_state(), state_before)  # caller's RNG untouched
    assert first.train_loss == second.train_loss
    assert first.grad_norm == second.grad_norm
    other_seed = train(dropout_mlp(), regression_batches, mse, quiet(steps=25, seed=1), progress=False)
    assert other_seed.train_loss != first.train_loss


def test_non_finite_loss_names_the_step():
    def breaks_at_step_3(model, batch):
        loss = mse(model, batch)
        return loss * float("nan") if int(batch["step"]) == 3 else loss

    with pytest.raises(FloatingPointError, match="step 3"):
        train(new_regression_model(), regression_batches, breaks_at_step_3, quiet(steps=10),
              progress=False)


def test_batches_of_any_structure_reach_the_device():
    seen = []

    def batches(step, generator):
        x = torch.randn(4, 3, generator=generator)
        return [x, (x.sum(1, keepdim=True), "label")]

    def loss_fn(model, batch):
        x, (y, label) = batch
        seen.append((type(batch), type(batch[1]), label, x.device.type))
        return nn.functional.mse_loss(model(x), y)

    train(new_regression_model(), batches, loss_fn, quiet(steps=2), progress=False)
    assert seen == [(list, tuple, "label", "cpu")] * 2

    class Batch:  # a batch class that knows how to move itself
        def __init__(self, x, moved_to=None):
            self.x, self.moved_to = x, moved_to

        def to(self, device):
            return Batch(self.x.to(device), moved_to=str(device))

    def batch_loss(model, batch):
        seen.append(batch.moved_to)
        return model(batch.x).pow(2).mean()

    train(new_regression_model(), lambda step, generator: Batch(torch.ones(2, 3)), batch_loss,
          quiet(steps=1), progress=False)
    assert seen[-1] == "cpu"


def test_progress_bar_runs(capsys):
    history = train(new_regression_model(), regression_batches, mse, quiet(steps=5, eval_every=2),
                    eval_fn=lambda model: {"loss": 1.0}, progress=True)
    assert len(history.train_loss) == 5
    printed = capsys.readouterr()
    assert "loss=" in printed.err and "lr=" in printed.err  # the bar, on stderr
    assert "step 2: loss=1.0000" in printed.out  # evaluations, on stdout


def test_history_plot_and_json():
    history = train(new_regression_model(), regression_batches, mse, quiet(steps=40, eval_every=10),
                    eval_fn=lambda model: {"loss": 0.1, "accuracy": 0.9}, progress=False)
    figure = history.plot(reference=0.05, reference_label="Bayes-optimal")
    assert isinstance(figure, Figure)
    labels = figure.axes[0].get_legend().get_texts()
    assert "Bayes-optimal" in [label.get_text() for label in labels]
    matplotlib.pyplot.close(figure)

    _, ax = matplotlib.pyplot.subplots()
    assert History(steps=[0, 1], train_loss=[2.0, 1.0], lr=[1, 1], grad_norm=[1, 1]).plot(ax=ax) is ax.figure
    matplotlib.pyplot.close(ax.figure)

    record = json.loads(json.dumps(history.to_dict()))
    assert record["evals"][0] == {"step": 10, "metrics": {"loss": 0.1, "accuracy": 0.9}}
    assert History.from_dict(record) == history
    assert history.eval_metric("accuracy") == ([10, 20, 30, 40], [0.9] * 4)


def test_config_rejects_nonsense():
    with pytest.raises(ValueError, match="steps"):
        TrainConfig(steps=0)
    with pytest.raises(ValueError, match="warmup"):
        TrainConfig(steps=10, warmup_steps=11)


def test_bigram_model_on_the_hmm_language_lands_between_oracle_and_unigram():
    """Integration with genlab.data: the shifted causal-LM loss of a trained
    bigram table is scored on the same positions as ``next_token_loss``."""
    from genlab.data import HMMLanguage, lm_batches

    hmm = HMMLanguage(seed=0)
    training_sequences = hmm.sample(500, 64, seed=0)  # (500, 64)
    held_out = hmm.sample(200, 64, seed=1)  # (200, 64)
    bigram = nn.Embedding(hmm.n_symbols, hmm.n_symbols)  # row = logits of the next symbol
    nn.init.zeros_(bigram.weight)

    def next_token_loss(model, batch):
        inputs, targets = batch  # (B, T), (B, T)
        return nn.functional.cross_entropy(model(inputs).flatten(0, 1), targets.flatten())

    def held_out_loss(model):
        return {"loss": next_token_loss(model, (held_out[:, :-1], held_out[:, 1:]))}

    history = train(bigram, lambda step, generator: lm_batches(training_sequences, 64, 32, generator),
                    next_token_loss, TrainConfig(steps=150, lr=0.1, warmup_steps=10),
                    eval_fn=held_out_loss, progress=False)
    final_loss = history.evals[-1][1]["loss"]
    assert hmm.next_token_loss(held_out) + 0.1 < final_loss < hmm.unigram_entropy() - 0.3
