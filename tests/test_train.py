"""genlab.train: schedule, weight-decay groups, clipping, the from-scratch AdamW
against torch's, evaluation calls, reproducibility, errors and the History record.
Resumable training: tests/test_train_resume.py."""

import dataclasses
import io
import json
import math

import matplotlib
import pytest
import torch
from matplotlib.figure import Figure
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from genlab.checkpoints import checkpoint_key
from genlab.train import (
    AdamW,
    History,
    TrainConfig,
    clip_grad_norm,
    clip_gradients,
    global_grad_norm,
    lr_at,
    parameter_groups,
    train,
)

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


def test_lr_schedule_boundaries_are_exact():
    """The convention: the first warm-up step runs at lr / W (never at 0), the
    peak is held at steps W-1 and W (up to one rounding), the last step sits
    exactly on the floor."""
    cfg = TrainConfig(steps=50, lr=0.02, warmup_steps=7, min_lr_ratio=0.25)
    assert lr_at(0, cfg) == 0.02 / 7 > 0  # first warm-up step
    assert lr_at(6, cfg) == pytest.approx(0.02, rel=1e-15, abs=0)  # last warm-up step: the peak
    assert lr_at(7, cfg) == pytest.approx(0.02, rel=1e-15, abs=0)  # first cosine step: still the peak
    assert lr_at(8, cfg) < 0.02 * (1 - 1e-4)
    assert lr_at(49, cfg) == 0.02 * 0.25  # the end: the floor, exactly
    assert lr_at(50, cfg) == lr_at(49, cfg)  # after the end: stays there
    all_warmup = TrainConfig(steps=4, lr=1.0, warmup_steps=4)
    assert [lr_at(step, all_warmup) for step in range(4)] == [0.25, 0.5, 0.75, 1.0]  # no decay


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


def two_group_model(dtype):
    """Linear, LayerNorm, Linear: weight matrices decayed, biases and gains not."""
    model = nn.Sequential(nn.Linear(5, 8), nn.LayerNorm(8), nn.Tanh(), nn.Linear(8, 2)).to(dtype)
    init = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=init, dtype=dtype) * 0.5)
    return model


def adamw_pair(dtype, weight_decay=0.1, betas=(0.9, 0.95)):
    """The same model twice, under torch's AdamW and under genlab's, same two groups."""
    reference, ours = two_group_model(dtype), two_group_model(dtype)
    return (reference, torch.optim.AdamW(parameter_groups(reference, weight_decay), lr=0.0, betas=betas),
            ours, AdamW(parameter_groups(ours, weight_decay), lr=0.0, betas=betas))


def largest_parameter_difference(model_a, model_b) -> float:
    return max(float((a - b).detach().abs().max()) for a, b in zip(model_a.parameters(), model_b.parameters()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_genlab_adamw_equals_torch_adamw_over_100_steps(dtype):
    reference, torch_adamw, ours, genlab_adamw = adamw_pair(dtype)
    assert [group["weight_decay"] for group in genlab_adamw.param_groups] == [0.1, 0.0]
    start = [p.detach().clone() for p in ours.parameters()]
    schedule = TrainConfig(steps=100, lr=0.02, warmup_steps=10, min_lr_ratio=0.1)
    data = torch.Generator().manual_seed(0)
    largest = 0.0
    for step in range(100):
        x = torch.randn(16, 5, generator=data, dtype=dtype)  # (B, 5)
        y = torch.randn(16, 2, generator=data, dtype=dtype)  # (B, 2)
        for model, optimizer in ((reference, torch_adamw), (ours, genlab_adamw)):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, schedule)
            optimizer.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            optimizer.step()
        largest = max(largest, largest_parameter_difference(reference, ours))
    print(f"largest |genlab - torch| parameter difference over 100 steps, {dtype}: {largest:.3e}")
    assert largest < 1e-6
    moved = max(float((p.detach() - p0).abs().max()) for p, p0 in zip(ours.parameters(), start))
    assert moved > 0.1, "the parameters must have moved far more than the tolerance"
    for p_ref, p_ours in zip(reference.parameters(), ours.parameters()):
        state_ref, state_ours = torch_adamw.state[p_ref], genlab_adamw.state[p_ours]
        assert state_ours["step"] == int(state_ref["step"]) == 100
        for name in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(state_ours[name], state_ref[name], atol=1e-6, rtol=1e-5)


def test_genlab_adamw_decays_only_by_lr_times_weight_decay():
    """With a zero gradient, m = v = 0: the update is the decoupled decay alone."""
    weight = nn.Parameter(torch.full((3,), 2.0))
    optimizer = AdamW([weight], lr=0.1, weight_decay=0.5)
    weight.grad = torch.zeros(3)
    optimizer.step()
    torch.testing.assert_close(weight.detach(), torch.full((3,), 2.0 * (1 - 0.1 * 0.5)))


def test_genlab_adamw_state_dict_round_trips():
    def step(model, optimizer, seed):
        x = torch.randn(4, 5, generator=torch.Generator().manual_seed(seed))
        optimizer.zero_grad()
        model(x).pow(2).mean().backward()
        optimizer.step()

    model = two_group_model(torch.float32)
    optimizer = AdamW(parameter_groups(model, 0.1), lr=0.01)
    for seed in range(5):
        step(model, optimizer, seed)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    copy = two_group_model(torch.float32)
    copy.load_state_dict(saved["model"])
    copy_optimizer = AdamW(parameter_groups(copy, 0.1), lr=0.5)  # lr comes from the state dict
    copy_optimizer.load_state_dict(saved["optimizer"])
    assert copy_optimizer.param_groups[0]["lr"] == 0.01
    for seed in range(5, 10):
        step(model, optimizer, seed)
        step(copy, copy_optimizer, seed)
    for a, b in zip(model.parameters(), copy.parameters()):
        assert torch.equal(a, b)


def random_gradients(dtype, scale):
    weights = [nn.Parameter(torch.zeros(shape, dtype=dtype)) for shape in [(7,), (3, 4), (2, 2, 2)]]
    generator = torch.Generator().manual_seed(1)
    for weight in weights:
        weight.grad = scale * torch.randn(weight.shape, generator=generator, dtype=dtype)
    weights.append(nn.Parameter(torch.zeros(2, dtype=dtype)))  # no gradient: skipped
    return weights


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [10.0, 0.01])  # above and below the limit
def test_clip_grad_norm_equals_torch(dtype, scale):
    ours, reference = random_gradients(dtype, scale), random_gradients(dtype, scale)
    as_one_vector = torch.cat([w.grad.flatten() for w in ours[:-1]])
    norm = clip_grad_norm(ours, max_norm=1.0)
    torch.testing.assert_close(norm, torch.linalg.vector_norm(as_one_vector), rtol=1e-6, atol=0)
    # on the CPU both do the same operations in the same order: equal bit for bit
    assert torch.equal(norm, torch.nn.utils.clip_grad_norm_(reference, 1.0))
    for a, b in zip(ours, reference):
        if a.grad is not None:
            assert torch.equal(a.grad, b.grad)
    clipped = float(global_grad_norm(ours))
    assert clipped == pytest.approx(min(float(norm), 1.0), rel=1e-5)
    assert ours[-1].grad is None


def test_clip_grad_norm_at_the_limit_scales_by_a_hair_as_torch_does():
    """The factor is max_norm / (norm + 1e-6): a norm equal to max_norm is scaled by 1 / (1 + 1e-6)."""
    weight = nn.Parameter(torch.zeros(2, dtype=torch.float64))
    weight.grad = torch.tensor([0.6, 0.8], dtype=torch.float64)  # norm 1
    assert float(clip_grad_norm([weight], 1.0)) == pytest.approx(1.0, rel=1e-15)
    torch.testing.assert_close(weight.grad, torch.tensor([0.6, 0.8], dtype=torch.float64) / (1 + 1e-6),
                               rtol=1e-14, atol=0)


def test_clip_gradients_with_either_implementation():
    for implementation in ("torch", "genlab"):
        weights = random_gradients(torch.float32, 10.0)
        norm = clip_gradients(weights, 2.0, implementation=implementation)
        assert norm > 2.0 and float(global_grad_norm(weights)) == pytest.approx(2.0, rel=1e-5)
        assert clip_gradients(weights, None, implementation=implementation) == pytest.approx(2.0, rel=1e-5)
    with pytest.raises(ValueError, match="implementation"):
        clip_gradients(weights, 1.0, implementation="numpy")


@pytest.mark.parametrize("max_norm", [0.0, -1.0, float("nan"), float("inf")])
def test_clip_grad_norm_rejects_bad_max_norm(max_norm):
    with pytest.raises(ValueError, match="max_norm"):
        clip_grad_norm(random_gradients(torch.float32, 1.0), max_norm)


@pytest.mark.parametrize("settings, message", [
    (dict(lr=-1e-3), "lr"),
    (dict(betas=(1.0, 0.9)), "betas"),
    (dict(betas=(0.9, -0.1)), "betas"),
    (dict(betas=0.9), "betas"),
    (dict(eps=0.0), "eps"),
    (dict(weight_decay=-0.1), "weight_decay"),
])
def test_genlab_adamw_rejects_bad_hyperparameters(settings, message):
    model = two_group_model(torch.float32)
    with pytest.raises(ValueError, match=message):
        AdamW(model.parameters(), **settings)
    with pytest.raises(ValueError, match=f"param group 1: {message}"):
        AdamW([{"params": [model[0].weight]}, {"params": [model[0].bias], **settings}])


def test_genlab_adamw_rejects_a_negative_lr_set_between_steps():
    weight = nn.Parameter(torch.ones(2))
    optimizer = AdamW([weight], lr=0.1)
    weight.grad = torch.ones(2)
    optimizer.param_groups[0]["lr"] = -0.1
    with pytest.raises(ValueError, match="param group 0: lr"):
        optimizer.step()


@pytest.mark.parametrize("settings, message", [
    (dict(lr=-0.1), "lr"),
    (dict(betas=(0.9, 1.0)), "betas"),
    (dict(weight_decay=-1.0), "weight_decay"),
    (dict(grad_clip=-1.0), "grad_clip"),
    (dict(optimizer="sgd"), "optimizer"),
])
def test_config_rejects_bad_optimizer_settings(settings, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**settings)


def test_default_optimizer_is_torch_and_genlab_trains_the_same():
    optimizers_seen = []
    handle = register_optimizer_step_pre_hook(lambda optimizer, args, kwargs: optimizers_seen.append(
        type(optimizer)))
    try:
        assert TrainConfig().optimizer == "torch"
        with_torch = train(new_regression_model(), regression_batches, mse, quiet(steps=150, warmup_steps=5),
                           progress=False)
        with_genlab = train(new_regression_model(), regression_batches, mse,
                            quiet(steps=150, warmup_steps=5, optimizer="genlab"), progress=False)
    finally:
        handle.remove()
    assert optimizers_seen == [torch.optim.AdamW] * 150 + [AdamW] * 150
    assert with_genlab.train_loss == pytest.approx(with_torch.train_loss, rel=1e-4, abs=1e-7)  # rounding only
    assert with_genlab.train_loss[-1] < 1e-3 * with_genlab.train_loss[0]


def test_optimizer_field_keeps_the_cache_keys_of_models_trained_before_it():
    """TrainConfig.optimizer enters genlab.checkpoints' key only when it is not the default:
    the key of a default config equals that of the same config without the field."""
    fields_before = [(f.name, f.type, f) for f in dataclasses.fields(TrainConfig) if f.name != "optimizer"]
    TrainConfigBefore = dataclasses.make_dataclass("TrainConfig", fields_before)  # noqa: N806
    model = nn.Linear(3, 1)
    values = dict(steps=7, lr=0.01, warmup_steps=2)
    before = checkpoint_key("lin", model, {"train": TrainConfigBefore(**values)})
    assert checkpoint_key("lin", model, {"train": TrainConfig(**values)}) == before
    assert checkpoint_key("lin", model, {"train": TrainConfig(**values, optimizer="genlab")}) != before


@pytest.mark.parametrize("optimizer", ["torch", "genlab"])
def test_train_clips_before_each_update(optimizer):
    norms_seen_by_optimizer = []

    def record_norm(optimizer, args, kwargs):
        grads = [p.grad.flatten() for group in optimizer.param_groups for p in group["params"]]
        norms_seen_by_optimizer.append(float(torch.cat(grads).norm()))

    def huge_loss(model, batch):
        return 1e4 * mse(model, batch)

    handle = register_optimizer_step_pre_hook(record_norm)
    try:
        history = train(new_regression_model(), regression_batches, huge_loss,
                        quiet(steps=10, grad_clip=0.5, optimizer=optimizer), progress=False)
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
