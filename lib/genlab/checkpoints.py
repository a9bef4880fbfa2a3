"""Train once, load afterwards: a small on-disk cache of the lectures' trained models.

A lecture that trains a model for two minutes should not make the audience
wait for those two minutes every time it is opened.  ``load_or_train`` runs
the training the first time, saves the weights and the training ``History``,
and loads them on every later call with the same recipe::

    from genlab.checkpoints import load_or_train

    RETRAIN = False  # True: train from scratch even when a checkpoint is cached
    model, history = load_or_train(
        "bert-hmm",
        build_model=lambda: BertForPreTraining(config, seed=0),
        train_fn=lambda model: train(model, batches, loss_fn, train_cfg),
        settings={"train": train_cfg, "data": data_settings},
        retrain=RETRAIN,
    )

Nothing is downloaded: every checkpoint is produced by the code that asks
for it.  Where the files go:

- ``$GENLAB_CACHE`` when that environment variable is set (the folder itself),
  else ``~/.cache/genlab/checkpoints``; ``cache_dir=`` overrides both.  The
  cache lives outside the repository and is never committed.
- Each checkpoint is two files, ``<name>-<hash>.pt`` (the ``state_dict``,
  loaded with ``weights_only=True``: plain tensors, no pickled code) and
  ``<name>-<hash>.json`` (the ``History`` and how it was made: settings,
  seconds, device, torch version, date).  The lectures' models are a few
  hundred kilobytes.

The ``<hash>`` is a SHA-256 digest of the name, of ``settings`` (anything
JSON-like: dicts, lists, numbers, strings, dataclasses such as ``TrainConfig``),
of the model's ``config`` dataclass when it has one, and of the names, shapes
and dtypes of its parameters.  Change the number of steps, the seed, the data
or the architecture and the old checkpoint is simply not found: training
runs again under a new hash.  What the hash cannot see is the *code* of
``build_model`` and ``train_fn``: put everything that matters into
``settings``, or pass ``retrain=True``.

Where the model was trained is not part of the key: a field or key named
``device`` (``TrainConfig.device``, ``{"device": "cuda"}``) is left out of the
hash, so a model a lecturer trained on a GPU loads on a CPU laptop instead of
being trained again there.  The device stays in the ``.json`` record, and the
line printed on loading names it when it differs from the model's own device
(weights trained on another device differ only by rounding).

Files are written to a temporary name and renamed, the JSON last, so a run
that is interrupted while saving leaves no half checkpoint behind; a file
that cannot be read is reported and the model is trained again.

``python -m genlab.checkpoints`` lists the cache; ``... clear`` empties it.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from genlab.train import History

__all__ = ["CACHE_ENV", "default_cache_dir", "checkpoint_key", "load_or_train", "list_checkpoints",
           "clear_checkpoints"]

CACHE_ENV = "GENLAB_CACHE"
FORMAT = 1  # bump when the files' layout changes: old checkpoints are then ignored
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def default_cache_dir() -> Path:
    """``$GENLAB_CACHE`` if set (and not empty), else ``~/.cache/genlab/checkpoints``."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    return Path.home() / ".cache" / "genlab" / "checkpoints"


NOT_IN_KEY = frozenset({"device"})  # where a model trains does not change which model it is
# Metadata flag of a dataclass field added after models were cached with the dataclass:
# at its default value the field stays out of the key, so those models keep their keys.
OMITTED_FROM_KEY_WHEN_DEFAULT = "omitted_from_key_when_default"


def _in_key(value: Any, field: dataclasses.Field) -> bool:
    if field.name in NOT_IN_KEY:
        return False
    at_default = getattr(value, field.name) == field.default
    return not (field.metadata.get(OMITTED_FROM_KEY_WHEN_DEFAULT) and at_default)


def _jsonable(value: Any, where: str = "settings") -> Any:
    """``value`` as plain JSON types, so that its hash does not depend on memory addresses.

    Dataclass fields and dict keys named in ``NOT_IN_KEY`` are left out, and so are
    dataclass fields flagged ``OMITTED_FROM_KEY_WHEN_DEFAULT`` that hold their default."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"__dataclass__": type(value).__name__,
                **{f.name: _jsonable(getattr(value, f.name), f"{where}.{f.name}")
                   for f in dataclasses.fields(value) if _in_key(value, f)}}
    if isinstance(value, dict):
        return {str(k): _jsonable(v, f"{where}[{k!r}]") for k, v in value.items()
                if str(k) not in NOT_IN_KEY}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return repr(value)  # exact, and JSON has no inf/nan
    if isinstance(value, (torch.dtype, torch.device, Path)):
        return str(value)
    raise TypeError(f"{where}: cannot describe a {type(value).__name__} in a checkpoint key; "
                    "use numbers, strings, lists, dicts or dataclasses")


def _recipe(name: str, model: nn.Module, settings: Any) -> dict:
    config = getattr(model, "config", None)
    return {
        "format": FORMAT,
        "name": name,
        "settings": _jsonable(settings),
        "config": _jsonable(config, "model.config") if dataclasses.is_dataclass(config) else None,
        "parameters": [[key, list(tensor.shape), str(tensor.dtype)]
                       for key, tensor in model.state_dict().items()],
    }


def checkpoint_key(name: str, model: nn.Module, settings: Any = None) -> str:
    """``<name>-<12 hex digits>``: the file stem under which this recipe is cached."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"checkpoint name must be letters, digits, '_', '.', '-', got {name!r}")
    text = json.dumps(_recipe(name, model, settings), sort_keys=True)
    return f"{name}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def _write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Write via a temporary file in the same folder, then rename over ``path``."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(Path(temporary))
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def _describe(meta: dict) -> str:
    return (f"{meta.get('steps', '?')} steps in {meta.get('train_seconds', float('nan')):.0f} s "
            f"on {meta.get('device', '?')}, {meta.get('created', '?')[:10]}")


def _load(model: nn.Module, weights: Path, record: Path) -> History:
    meta = json.loads(record.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT}")
    state = torch.load(weights, map_location="cpu", weights_only=True)
    model.load_state_dict(state)  # copies onto the model's own device
    return History.from_dict(meta["history"])


def _model_device(model: nn.Module) -> str:
    tensor = next(iter(model.state_dict().values()), None)
    return "cpu" if tensor is None else str(tensor.device)


def load_or_train(
    name: str,
    build_model: Callable[[], nn.Module],
    train_fn: Callable[[nn.Module], History],
    settings: Any = None,
    cache_dir: str | os.PathLike | None = None,
    retrain: bool = False,
    verbose: bool = True,
) -> tuple[nn.Module, History]:
    """The trained model and its History: loaded from the cache, or trained and then cached.

    ``build_model()`` returns a fresh, untrained model (seed it).  ``train_fn(model)``
    trains it in place and returns its ``genlab.train.History``.  ``settings``
    describes everything else the result depends on (training config, data,
    seeds); it goes into the hash (see the module docstring).  ``retrain=True``
    trains even when a checkpoint exists, and replaces it.

    A loaded model sits where ``build_model`` put it (usually the CPU); a freshly
    trained one where ``train_fn`` left it.  Move it with ``.to(device)`` either way.
    The model's training/eval mode is left as it is.  Prints one line saying
    which of the two happened, unless ``verbose=False``.
    """
    model = build_model()
    if not isinstance(model, nn.Module):
        raise TypeError(f"build_model must return an nn.Module, got {type(model).__name__}")
    key = checkpoint_key(name, model, settings)
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    weights, record = folder / f"{key}.pt", folder / f"{key}.json"

    if not retrain and weights.exists() and record.exists():
        try:
            history = _load(model, weights, record)
        except Exception as error:  # a damaged or stale file: train again, say so
            warnings.warn(f"could not load checkpoint {weights} ({type(error).__name__}: {error}); "
                          "training again", stacklevel=2)
            model = build_model()
        else:
            if verbose:
                meta = json.loads(record.read_text())
                here = _model_device(model)
                moved = "" if meta.get("device") == here else f", loaded onto {here}"
                print(f"loaded checkpoint {key}: {_describe(meta)}{moved}\n  from {folder}")
            return model, history

    start = time.perf_counter()
    history = train_fn(model)
    seconds = time.perf_counter() - start
    if not isinstance(history, History):
        raise TypeError(f"train_fn must return a genlab.train.History, got {type(history).__name__}")

    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    meta = {
        "format": FORMAT,
        "key": key,
        "name": name,
        "recipe": _recipe(name, model, settings),
        "steps": len(history.steps),
        "train_seconds": round(seconds, 2),
        "device": _model_device(model),
        "torch": torch.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "history": history.to_dict(),
    }
    _write_atomically(weights, lambda path: torch.save(state, path))
    _write_atomically(record, lambda path: path.write_text(json.dumps(meta)))  # last: marks it complete
    if verbose:
        size = weights.stat().st_size + record.stat().st_size
        print(f"trained {key}: {_describe(meta)}\n  saved {size / 1e6:.2f} MB to {folder}")
    return model, history


def list_checkpoints(cache_dir: str | os.PathLike | None = None) -> list[dict]:
    """One dict per complete checkpoint in the cache: key, name, steps, seconds, device, size, path."""
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    found = []
    for record in sorted(folder.glob("*.json")):
        weights = record.with_suffix(".pt")
        try:
            meta = json.loads(record.read_text())
        except (OSError, ValueError):
            continue
        if not weights.exists():
            continue
        found.append({"key": record.stem, "name": meta.get("name"), "steps": meta.get("steps"),
                      "train_seconds": meta.get("train_seconds"), "device": meta.get("device"),
                      "created": meta.get("created"),
                      "bytes": weights.stat().st_size + record.stat().st_size, "path": str(weights)})
    return found


def clear_checkpoints(cache_dir: str | os.PathLike | None = None) -> int:
    """Delete every checkpoint file in the cache folder; returns how many files went."""
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    removed = 0
    for path in list(folder.glob("*.pt")) + list(folder.glob("*.json")):
        path.unlink()
        removed += 1
    return removed


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = argv[0] if argv else "list"
    if command == "list":
        entries = list_checkpoints()
        print(f"{default_cache_dir()}: {len(entries)} checkpoint(s)")
        for entry in entries:
            print(f"  {entry['key']:<32} {entry['steps']:>6} steps {entry['train_seconds']:>8.1f} s "
                  f"{entry['device']:<6} {entry['bytes'] / 1e6:6.2f} MB  {entry['created']}")
        return 0
    if command == "clear":
        print(f"removed {clear_checkpoints()} file(s) from {default_cache_dir()}")
        return 0
    print("usage: python -m genlab.checkpoints [list | clear]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
