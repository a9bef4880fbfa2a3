"""genlab.checkpoints: train once, load afterwards; the key follows the recipe."""

import json

import pytest
import torch
from torch import nn

from genlab.checkpoints import (
    CACHE_ENV,
    checkpoint_key,
    clear_checkpoints,
    default_cache_dir,
    list_checkpoints,
    load_or_train,
    main,
)
from genlab.decoder import GPT, GPTConfig
from genlab.train import History, TrainConfig, train


def build():
    torch.manual_seed(0)  # nn.Linear's init draws from the global RNG: seed it
    return nn.Linear(3, 1)


def batches(step, generator):
    x = torch.randn(16, 3, generator=generator)
    return x, x.sum(dim=1, keepdim=True)


def mse(model, batch):
    x, y = batch
    return nn.functional.mse_loss(model(x), y)


class Trainer:
    """train_fn that counts its calls."""

    def __init__(self, steps=20):
        self.cfg = TrainConfig(steps=steps, lr=0.05, weight_decay=0.0, seed=0)
        self.calls = 0

    def __call__(self, model):
        self.calls += 1
        return train(model, batches, mse, self.cfg, eval_fn=lambda m: {"w0": m.weight[0, 0].item()},
                     progress=False)


def test_trains_once_then_loads(tmp_path, capsys):
    trainer = Trainer()
    model, history = load_or_train("lin", build, trainer, settings=trainer.cfg, cache_dir=tmp_path)
    assert trainer.calls == 1 and "trained lin-" in capsys.readouterr().out
    files = sorted(p.suffix for p in tmp_path.iterdir())
    assert files == [".json", ".pt"], "one weights file and one JSON record, no temporary files left"

    again, history_again = load_or_train("lin", build, trainer, settings=trainer.cfg, cache_dir=tmp_path)
    assert trainer.calls == 1, "the second call must load, not train"
    assert "loaded checkpoint lin-" in capsys.readouterr().out
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    assert history_again.to_dict() == history.to_dict()
    assert isinstance(history_again, History) and history_again.evals[-1][0] == 20
    assert not torch.equal(build().weight, again.weight), "the loaded weights are the trained ones"


def test_recipe_changes_the_key(tmp_path):
    trainer = Trainer()
    load_or_train("lin", build, trainer, settings={"steps": 20}, cache_dir=tmp_path, verbose=False)
    load_or_train("lin", build, trainer, settings={"steps": 21}, cache_dir=tmp_path, verbose=False)
    assert trainer.calls == 2
    load_or_train("lin", build, trainer, settings={"steps": 20}, cache_dir=tmp_path, verbose=False,
                  retrain=True)
    assert trainer.calls == 3, "retrain=True trains even when the checkpoint exists"
    assert len(list_checkpoints(tmp_path)) == 2

    small = GPT(GPTConfig(n_embd=32, n_head=2), seed=0)
    wide = GPT(GPTConfig(n_embd=64, n_head=2), seed=0)
    assert checkpoint_key("gpt", small, {"a": 1}) != checkpoint_key("gpt", wide, {"a": 1})
    assert checkpoint_key("gpt", small, {"a": 1}) == checkpoint_key("gpt", small, {"a": 1})
    assert checkpoint_key("gpt", small, {"a": 1}) != checkpoint_key("gpt2", small, {"a": 1})
    assert checkpoint_key("gpt", small, TrainConfig(steps=5)) != checkpoint_key("gpt", small, TrainConfig(steps=6))


def test_the_training_device_is_not_part_of_the_key(tmp_path, capsys):
    """A model trained on a GPU is loaded on a CPU laptop, not trained again there."""
    small = GPT(GPTConfig(n_embd=32, n_head=2), seed=0)
    on_cpu, on_gpu = TrainConfig(steps=5, device="cpu"), TrainConfig(steps=5, device="cuda")
    assert checkpoint_key("gpt", small, on_cpu) == checkpoint_key("gpt", small, on_gpu)
    assert checkpoint_key("gpt", small, {"train": on_cpu, "device": "cpu"}) == \
        checkpoint_key("gpt", small, {"train": on_gpu, "device": "cuda:1"})
    assert checkpoint_key("gpt", small, {"devices": 1}) != checkpoint_key("gpt", small, {"devices": 2})

    trainer = Trainer()
    load_or_train("lin", build, trainer, settings=trainer.cfg, cache_dir=tmp_path)
    assert "on cpu" in capsys.readouterr().out
    record = next(tmp_path.glob("*.json"))  # as if the lecturer had trained it on a GPU
    record.write_text(json.dumps({**json.loads(record.read_text()), "device": "cuda:0"}))
    gpu_settings = TrainConfig(**{**trainer.cfg.__dict__, "device": "cuda"})
    model, _ = load_or_train("lin", build, lambda m: pytest.fail("should load"),
                             settings=gpu_settings, cache_dir=tmp_path)
    assert "on cuda:0" in (out := capsys.readouterr().out) and "loaded onto cpu" in out
    assert model.weight.device.type == "cpu"


def test_bad_settings_and_names():
    with pytest.raises(TypeError, match="settings"):
        checkpoint_key("lin", build(), {"fn": lambda: 0})
    for name in ("", "../escape", "a b"):
        with pytest.raises(ValueError, match="checkpoint name"):
            checkpoint_key(name, build())


def test_damaged_checkpoint_is_trained_again(tmp_path):
    trainer = Trainer()
    load_or_train("lin", build, trainer, cache_dir=tmp_path, verbose=False)
    next(tmp_path.glob("*.pt")).write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning, match="could not load checkpoint"):
        model, _ = load_or_train("lin", build, trainer, cache_dir=tmp_path, verbose=False)
    assert trainer.calls == 2
    _, _ = load_or_train("lin", build, trainer, cache_dir=tmp_path, verbose=False)
    assert trainer.calls == 2, "the retrained checkpoint replaced the damaged one"


def test_a_missing_record_means_no_checkpoint(tmp_path):
    trainer = Trainer()
    load_or_train("lin", build, trainer, cache_dir=tmp_path, verbose=False)
    next(tmp_path.glob("*.json")).unlink()  # as if interrupted before the record was written
    assert list_checkpoints(tmp_path) == []
    load_or_train("lin", build, trainer, cache_dir=tmp_path, verbose=False)
    assert trainer.calls == 2


def test_train_fn_must_return_a_history(tmp_path):
    with pytest.raises(TypeError, match="History"):
        load_or_train("lin", build, lambda model: None, cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_cache_folder_from_environment(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    assert default_cache_dir() == tmp_path / "cache"
    trainer = Trainer()
    load_or_train("lin", build, trainer, verbose=False)
    [entry] = list_checkpoints()
    assert entry["name"] == "lin" and entry["steps"] == 20 and entry["bytes"] < 100_000
    record = json.loads((tmp_path / "cache" / f"{entry['key']}.json").read_text())
    assert record["device"] == "cpu" and record["torch"] == torch.__version__
    assert main(["list"]) == 0 and entry["key"] in capsys.readouterr().out
    assert main(["clear"]) == 0 and clear_checkpoints() == 0
    assert list_checkpoints() == []
    monkeypatch.delenv(CACHE_ENV)
    assert default_cache_dir().parts[-3:] == (".cache", "genlab", "checkpoints")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_checkpoint_trained_on_cuda_loads_on_cpu(tmp_path):
    cfg = TrainConfig(steps=5, lr=0.05, weight_decay=0.0, seed=0, device="cuda")
    trained, _ = load_or_train("lin", build, lambda m: train(m, batches, mse, cfg, progress=False),
                               settings=cfg, cache_dir=tmp_path, verbose=False)
    loaded, _ = load_or_train("lin", build, lambda m: pytest.fail("should load"), settings=cfg,
                              cache_dir=tmp_path, verbose=False)
    assert loaded.weight.device.type == "cpu"
    torch.testing.assert_close(loaded.weight, trained.weight.cpu())
