"""genlab.train's checkpoints: an interrupted run resumed from its checkpoint ends
bit for bit where the uninterrupted run ends; killed runs leave a readable
checkpoint; a checkpoint from another model or config is refused."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from genlab.train import CheckpointMismatch, TrainConfig, lr_at, read_checkpoint, train

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
STEPS = 40


class Interrupted(Exception):
    """Stands for a kill: raised from inside the training loop."""


def noisy_sine_batches(step, generator):
    x = 3 * torch.rand(24, 2, generator=generator) - 1.5  # (B, 2)
    y = torch.sin(x[:, :1]) * x[:, 1:] + 0.05 * torch.randn(24, 1, generator=generator)  # (B, 1)
    return x, y


def squared_error(model, batch):
    x, y = batch
    return (model(x) - y).pow(2).mean()


def interrupted_at(stop_step):
    """Batches that raise ``Interrupted`` when the loop asks for step ``stop_step``."""
    def batches(step, generator):
        if step == stop_step:
            raise Interrupted(f"killed before step {stop_step}")
        return noisy_sine_batches(step, generator)
    return batches


def build(dropout: float, hidden: int = 16, init_seed: int = 0) -> nn.Module:
    generator = torch.Generator().manual_seed(init_seed)
    model = nn.Sequential(nn.Linear(2, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, 1))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(0.5 * torch.randn(parameter.shape, generator=generator))
    return model


def settings(**overrides) -> TrainConfig:
    values = dict(steps=STEPS, lr=0.02, warmup_steps=8, weight_decay=0.1, grad_clip=0.5, eval_every=10, seed=3)
    values.update(overrides)
    return TrainConfig(**values)


def mean_output(model):
    return {"mean_output": model(torch.linspace(-1, 1, 10).reshape(5, 2)).mean()}


def run(model, cfg, batches=noisy_sine_batches, **checkpointing):
    return train(model, batches, squared_error, cfg, eval_fn=mean_output, progress=False, **checkpointing)


def assert_same_run(model_a, history_a, model_b, history_b):
    for (name, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        assert torch.equal(a, b), f"{name} differs"
    assert history_a.to_dict() == history_b.to_dict()  # losses, lrs, norms, evaluations: identical


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("optimizer", ["torch", "genlab"])
@pytest.mark.parametrize("dropout", [0.0, 0.3])  # 0.3: dropout masks from the global RNG
def test_stopped_and_resumed_run_is_bit_for_bit_the_straight_run(tmp_path, device, optimizer, dropout):
    cfg = settings(optimizer=optimizer, device=device)
    straight = build(dropout)
    straight_history = run(straight, cfg)

    path = tmp_path / "run.pt"
    with pytest.raises(Interrupted):
        run(build(dropout), cfg, interrupted_at(STEPS // 2), checkpoint_path=path, checkpoint_every=10)
    assert read_checkpoint(path)["step"] == STEPS // 2

    torch.manual_seed(12345)  # a restarted process has another global RNG state
    resumed = build(dropout, init_seed=99)  # and a freshly built model
    resumed_history = run(resumed, cfg, checkpoint_path=path, checkpoint_every=10, resume=True)
    assert resumed_history.steps == list(range(STEPS))
    first_resumed_lr = resumed_history.lr[STEPS // 2]
    assert first_resumed_lr == lr_at(STEPS // 2, cfg) != lr_at(0, cfg)  # the warm-up is not restarted
    assert_same_run(straight, straight_history, resumed, resumed_history)
    assert read_checkpoint(path)["step"] == STEPS


def test_resumed_in_a_new_process(tmp_path):
    """The second half runs in a fresh Python process, as after a real restart."""
    cfg = settings(optimizer="genlab")
    straight = build(dropout=0.3)
    straight_history = run(straight, cfg)
    path = tmp_path / "run.pt"
    with pytest.raises(Interrupted):
        run(build(dropout=0.3), cfg, interrupted_at(STEPS // 2), checkpoint_path=path, checkpoint_every=20)

    script = f"""
import sys, torch
sys.path.insert(0, {str(Path(__file__).parent)!r})
import test_train_resume as t
model = t.build(dropout=0.3, init_seed=7)
history = t.run(model, t.settings(optimizer="genlab"), checkpoint_path={str(path)!r}, resume=True)
torch.save({{"model": model.state_dict(), "history": history.to_dict()}}, {str(tmp_path / "result.pt")!r})
"""
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300,
                   env=dict(os.environ, PYTHONHASHSEED="1"))
    result = torch.load(tmp_path / "result.pt", weights_only=True)
    for name, tensor in straight.state_dict().items():
        assert torch.equal(tensor, result["model"][name]), f"{name} differs"
    assert result["history"] == straight_history.to_dict()


def test_killed_run_leaves_the_last_complete_checkpoint(tmp_path):
    cfg = settings()
    path = tmp_path / "run.pt"
    with pytest.raises(Interrupted):
        run(build(dropout=0.3), cfg, interrupted_at(13), checkpoint_path=path, checkpoint_every=5)
    record = read_checkpoint(path)
    assert record["step"] == 10 and record["history"]["steps"] == list(range(10))
    assert [entry["step"] for entry in record["history"]["evals"]] == [10]
    assert os.listdir(tmp_path) == ["run.pt"], "no temporary files left behind"

    straight = build(dropout=0.3)
    straight_history = run(straight, cfg)
    resumed = build(dropout=0.3)
    assert_same_run(straight, straight_history,
                    resumed, run(resumed, cfg, checkpoint_path=path, checkpoint_every=5, resume=True))


def test_killed_while_writing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    real_save = torch.save
    saves = []

    def save_then_die_on_the_second(record, destination):
        saves.append(destination)
        if len(saves) == 2:
            Path(destination).write_bytes(b"half a checkpoint")
            raise Interrupted("killed while writing")
        real_save(record, destination)

    monkeypatch.setattr(torch, "save", save_then_die_on_the_second)
    path = tmp_path / "run.pt"
    with pytest.raises(Interrupted):
        run(build(dropout=0.0), settings(), checkpoint_path=path, checkpoint_every=5)
    monkeypatch.undo()
    assert len(saves) == 2 and Path(saves[1]) != path, "written to a temporary name first"
    assert read_checkpoint(path)["step"] == 5
    assert os.listdir(tmp_path) == ["run.pt"]


def test_a_finished_run_resumes_to_its_history_without_training(tmp_path):
    path = tmp_path / "run.pt"
    model = build(dropout=0.0)
    history = run(model, settings(), checkpoint_path=path)  # checkpoint_every=None: only at the end
    assert read_checkpoint(path)["step"] == STEPS

    def no_more_batches(step, generator):
        raise AssertionError("a finished run must not train again")

    again = build(dropout=0.0, init_seed=5)
    assert_same_run(model, history, again, run(again, settings(), no_more_batches, checkpoint_path=path,
                                               resume=True))


@pytest.mark.parametrize("changed_cfg, changed_model, named", [
    (dict(lr=0.03), {}, "TrainConfig.lr is 0.02 in the checkpoint, 0.03 now"),
    (dict(optimizer="genlab"), {}, "TrainConfig.optimizer is 'torch' in the checkpoint, 'genlab' now"),
    (dict(steps=80), {}, "TrainConfig.steps"),
    ({}, dict(hidden=8), "model entry '0.weight' is (16, 2) torch.float32 in the checkpoint, (8, 2)"),
])
def test_checkpoint_of_another_run_is_refused(tmp_path, changed_cfg, changed_model, named):
    path = tmp_path / "run.pt"
    short = dict(steps=5, warmup_steps=2)
    run(build(dropout=0.0), settings(**short), checkpoint_path=path)
    other = build(**{"dropout": 0.0, **changed_model})
    with pytest.raises(CheckpointMismatch, match="written by a different run") as error:
        run(other, settings(**{**short, **changed_cfg}), checkpoint_path=path, resume=True)
    assert named in str(error.value)


def test_checkpoint_arguments_are_checked(tmp_path):
    cfg = settings(steps=3, warmup_steps=1)
    with pytest.raises(ValueError, match="need a checkpoint_path"):
        run(build(0.0), cfg, resume=True)
    with pytest.raises(ValueError, match="need a checkpoint_path"):
        run(build(0.0), cfg, checkpoint_every=2)
    with pytest.raises(ValueError, match="checkpoint_every"):
        run(build(0.0), cfg, checkpoint_path=tmp_path / "run.pt", checkpoint_every=0)
    with pytest.raises(FileNotFoundError, match="resume=False"):
        run(build(0.0), cfg, checkpoint_path=tmp_path / "missing.pt", resume=True)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a genlab.train checkpoint"):
        run(build(0.0), cfg, checkpoint_path=tmp_path / "other.pt", resume=True)
