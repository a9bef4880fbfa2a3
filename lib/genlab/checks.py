"""Checks for the course's assignments: run a function on stored cases, explain any mismatch.

Each graded function of an assignment has *checks*; each check has *cases*, stored as
plain ``.npz`` files (no pickle) under ``autograder/references/<assignment>/``:

    in.<name>      an input (array; a 0-d array for a number or flag; a string
                   "genlab:<name>" for a callable from ``NAMED_CALLABLES``)
    out.<i>        the i-th expected output        (absent from the files the grader
    alt.<bug>.<i>  the output of a known bug        hands to the student's kernel)
    meta           JSON: the case's parameters, for messages

This module has three users:

* the student's notebook: ``AssignmentChecks(...).check(name, fn)`` runs the *public*
  cases and raises ``AssertionError`` with a message that says what is wrong and
  where. These checks teach; they never grade.
* the student's kernel during grading: ``Recorder(directory)`` only runs the student's
  function on the inputs the grader put there and saves what it returned as arrays.
* the grader's own trusted process: ``compare_outputs`` decides each check.
"""

from __future__ import annotations

import inspect
import json
import os
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
import torch

# ----------------------------------------------------------------------------- files


REFERENCES_ENV = "GENLAB_REFERENCES"
# the repository (or unzipped student bundle) that holds lib/genlab/, when installed editable
CHECKOUT = Path(__file__).resolve().parents[2]


def references_root() -> Path:
    """Where references live: ``$GENLAB_REFERENCES``; else ``autograder/references`` of the
    checkout genlab was installed from (``pip install -e .``, ``make setup``); else of the
    current folder or the nearest folder above it that has one (genlab installed
    non-editable, e.g. ``pip install .`` or a conda environment, and the notebook opened
    inside the unzipped bundle)."""
    env = os.environ.get(REFERENCES_ENV)
    if env:
        return Path(env)
    beside_library = CHECKOUT / "autograder" / "references"
    if beside_library.is_dir():
        return beside_library
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "autograder" / "references").is_dir():
            return folder / "autograder" / "references"
    return beside_library  # missing: the error names where it was looked for


def save_case(path: Path, inputs: dict, outputs: list | None = None,
              alternatives: dict | None = None, meta: dict | None = None, raises: str | None = None) -> None:
    """Write one case as a plain ``.npz`` (inputs as given: arrays, numbers, strings);
    ``raises``: the class name of the exception the call must raise (then no outputs)."""
    arrays = {f"in.{k}": np.asarray(v) for k, v in inputs.items()}
    if raises:
        arrays["raises"] = np.asarray(raises)
    for i, out in enumerate(outputs or []):
        arrays[f"out.{i}"] = np.asarray(out)
    for bug, outs in (alternatives or {}).items():
        for i, out in enumerate(outs):
            arrays[f"alt.{bug}.{i}"] = np.asarray(out)
    arrays["meta"] = np.asarray(json.dumps(meta or {}, sort_keys=True))
    write_npz(path, arrays)


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like ``np.savez`` but byte-for-byte reproducible (fixed zip timestamps), so a
    rebuilt reference has the same sha256 as the one in the manifest."""
    import io
    import zipfile

    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key in sorted(arrays):
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asarray(arrays[key]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buffer.getvalue())


@dataclass
class Case:
    inputs: dict[str, np.ndarray]
    expected: list[np.ndarray] = field(default_factory=list)
    alternatives: dict[str, list[np.ndarray]] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    raises: str | None = None  # the exception the call must raise (its class name), if any

    @classmethod
    def load(cls, path: Path) -> "Case":
        case = cls(inputs={})
        with np.load(path, allow_pickle=False) as z:
            for key in z.files:
                kind, _, rest = key.partition(".")
                if kind == "in":
                    case.inputs[rest] = z[key]
                elif kind == "out":
                    case.expected.append((int(rest), z[key]))
                elif kind == "alt":
                    bug, _, i = rest.rpartition(".")
                    case.alternatives.setdefault(bug, []).append((int(i), z[key]))
                elif kind == "meta":
                    case.meta = json.loads(str(z[key]))
                elif kind == "raises":
                    case.raises = str(z[key])
        case.expected = [a for _, a in sorted(case.expected, key=lambda t: t[0])]
        case.alternatives = {b: [a for _, a in sorted(v, key=lambda t: t[0])]
                             for b, v in case.alternatives.items()}
        return case

    def describe(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.meta.items()) or "no parameters"


# ------------------------------------------------------------------- calling a function


def _causal_attention() -> Callable:
    return _seeded_self_attention(is_causal=True)


def _full_attention() -> Callable:
    return _seeded_self_attention(is_causal=False)


def _window_attention() -> Callable:
    from genlab.masks import sliding_window_mask

    return _seeded_self_attention(mask_fn=lambda T: sliding_window_mask(T, window=3))


def _seeded_self_attention(is_causal: bool = False, mask_fn=None, d_model: int = 8,
                           n_heads: int = 2, seed: int = 0) -> Callable:
    """A fixed multi-head self-attention (B, T, d_model) -> (B, T, d_model), weights from ``seed``."""
    from genlab.attention import multi_head_self_attention

    g = torch.Generator().manual_seed(seed)
    W = [torch.randn(d_model, d_model, generator=g, dtype=torch.float64) / d_model**0.5
         for _ in range(4)]

    def attention(x: torch.Tensor) -> torch.Tensor:
        mask = mask_fn(x.shape[1]) if mask_fn else None
        Ws = [w.to(dtype=x.dtype, device=x.device) for w in W]
        return multi_head_self_attention(x, *Ws, n_heads=n_heads, attn_mask=mask,
                                         is_causal=is_causal)

    return attention


# Callables a case may pass to the function under test (stored as "genlab:<name>").
NAMED_CALLABLES: dict[str, Callable[[], Callable]] = {
    "causal_attention": _causal_attention,
    "full_attention": _full_attention,
    "window_attention": _window_attention,
}


MODULE_KEY = "__module__"   # JSON {"config_class": dotted name, "config": {...}}
STATE_PREFIX = "__state__."  # the module's parameters and buffers, by state_dict name


def call_arguments(inputs: dict[str, np.ndarray]) -> dict[str, Any]:
    """Stored inputs -> keyword arguments: arrays become tensors, 0-d arrays Python scalars,
    "genlab:<name>" a callable from ``NAMED_CALLABLES``, "seed:<n>" a seeded torch.Generator."""
    kwargs = {}
    for name, value in inputs.items():
        if name == MODULE_KEY or name.startswith(STATE_PREFIX):
            continue
        if value.dtype.kind == "U":
            text = str(value)
            if text.startswith("seed:"):
                kwargs[name] = torch.Generator().manual_seed(int(text[5:]))
            elif text.startswith("genlab:"):
                if text[7:] not in NAMED_CALLABLES:  # an assignment's own, registered by its module
                    from genlab.properties import load_all

                    load_all()
                if text[7:] not in NAMED_CALLABLES:
                    raise ValueError(f"input {name!r}: unknown callable {text!r}")
                kwargs[name] = NAMED_CALLABLES[text[7:]]()
            else:
                raise ValueError(f"input {name!r}: unknown value {text!r}")
        elif value.ndim == 0:
            kwargs[name] = value.item()
        else:
            kwargs[name] = torch.from_numpy(np.array(value))
    return kwargs


class StateDictError(ValueError):
    pass


def _buffer_hint(module: torch.nn.Module, unexpected: list[str]) -> str:
    """Unexpected state-dict entries that are buffers (a causal mask, say), not parameters."""
    buffers = {name for name, _ in module.named_buffers()}
    extra = [name for name in unexpected if name in buffers]
    if not extra:
        return ""
    return (f" ({', '.join(extra[:3])} {'is a buffer' if len(extra) == 1 else 'are buffers'}: "
            "register it with persistent=False, or build it in forward)")


def build_module(cls: Callable, inputs: dict[str, np.ndarray], device="cpu") -> torch.nn.Module:
    """``cls(config)`` with the case's weights loaded: how a module (a class the student
    writes, with HF parameter names) is called on fixed tiny weights."""
    spec = json.loads(str(inputs[MODULE_KEY]))
    config = resolve(spec["config_class"])(**spec["config"])
    module = cls(config)
    state = {k[len(STATE_PREFIX):]: torch.from_numpy(np.array(v)) for k, v in inputs.items()
             if k.startswith(STATE_PREFIX)}
    own = module.state_dict()
    missing = sorted(set(state) - set(own))
    unexpected = sorted(set(own) - set(state))
    if missing or unexpected:
        raise StateDictError(
            "your module's parameter names differ from the expected (HF) names: "
            + (f"missing {missing[:6]}" if missing else "")
            + ("; " if missing and unexpected else "")
            + (f"unexpected {unexpected[:6]}" if unexpected else "")
            + _buffer_hint(module, unexpected))
    for name, value in state.items():
        if own[name].shape != value.shape:
            raise StateDictError(f"parameter `{name}` has shape {tuple(own[name].shape)}, "
                                 f"expected {tuple(value.shape)}")
    module.load_state_dict(state)
    return module.to(device).eval()


def call_case(fn: Callable, inputs: dict[str, np.ndarray], device="cpu") -> Any:
    """Call ``fn`` on a case's inputs: a function with keyword arguments, or a module class
    built with the case's config and weights and then called on the other inputs."""
    kwargs = call_arguments(inputs)
    kwargs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    if MODULE_KEY in inputs:
        fn = build_module(fn, inputs, device)
    with torch.no_grad():
        return fn(**kwargs)


class ReturnTypeError(TypeError):
    pass


def _to_array(value: Any, where: str) -> np.ndarray:
    """A returned value as a plain array, without trusting the object's own methods."""
    if isinstance(value, torch.Tensor):
        with torch._C.DisableTorchFunctionSubclass():
            plain = torch.Tensor.as_subclass(value, torch.Tensor)
            plain = torch.Tensor.detach(plain)
            plain = torch.Tensor.cpu(plain)
            if plain.dtype == torch.bfloat16:
                plain = plain.float()
            return np.array(torch.Tensor.numpy(plain), copy=True)
    if type(value) is np.ndarray:
        if value.dtype.hasobject:
            raise ReturnTypeError(f"{where} is an array of Python objects (dtype object); "
                                  "return numbers or strings, e.g. np.array(labels) of str")
        return np.array(value, copy=True)
    if type(value) in (bool, int, float) or _is_numpy_scalar(value):
        return np.asarray(value)
    raise ReturnTypeError(f"{where} is a {type(value).__name__}, expected a torch.Tensor, "
                          "a numpy array or a Python number")


def _is_numpy_scalar(value: Any) -> bool:
    """np.int64(3), np.float32(0.5), np.bool_(True): numpy's own scalar types, not subclasses."""
    return type(value).__module__ == "numpy" and isinstance(value, (np.bool_, np.number))


def outputs_as_arrays(result: Any) -> list[np.ndarray]:
    """A function's return value (a tensor or a tuple/list of them) -> list of arrays."""
    if type(result) in (tuple, list):
        return [_to_array(r, f"returned value {i}") for i, r in enumerate(result)]
    return [_to_array(result, "the returned value")]


def short_error(exc: BaseException) -> str:
    """'NotImplementedError' or 'ValueError: ... (line 4 of your cell)' for messages."""
    if isinstance(exc, NotImplementedError):
        return "NotImplementedError: not implemented yet"
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if f.filename.startswith("<ipython-input") or "ipykernel" in f.filename
              or f.filename.startswith("/tmp/ipykernel")]
    where = f" (line {frames[-1].lineno} of your code: {frames[-1].line})" if frames else ""
    text = f"{type(exc).__name__}: {exc}"
    return ((text[:300] + "...") if len(text) > 300 else text) + where


def run_case(fn: Callable, case: Case) -> tuple[list[np.ndarray], str | None]:
    """Call ``fn(**inputs)``; return (outputs, None) or ([], error message)."""
    try:
        return outputs_as_arrays(call_case(fn, case.inputs)), None
    except Exception as exc:  # the student's code may raise anything
        return [], short_error(exc)


# --------------------------------------------------------------------------- comparing


@dataclass
class Rule:
    """How a check compares outputs (from its manifest entry)."""

    compare: str = "allclose"          # "allclose" | "exact"
    rtol: float = 1e-5
    atol: float = 1e-6
    output_names: tuple[str, ...] = ("output",)
    bug_messages: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, check: dict) -> "Rule":
        return cls(compare=check["compare"], rtol=check["rtol"], atol=check["atol"],
                   output_names=tuple(check["outputs"]), bug_messages=check.get("bugs", {}))


def _index(idx) -> str:
    return "[" + ", ".join(str(int(i)) for i in idx) + "]"


def _at(idx) -> str:
    """' at [1, 2]' for an entry of an array; nothing for a scalar output."""
    return f" at {_index(idx)}" if len(idx) else ""


def _pair(got, expected) -> str:
    """'got a, expected b' with as many digits as it takes for the two to print differently."""
    for digits in (6, 10, 17):
        a, b = f"{got:.{digits}g}", f"{expected:.{digits}g}"
        if a != b:
            break
    return f"got {a}, expected {b}"


# numpy's functions as they were when genlab.checks was imported (the notebook's setup cell):
# a notebook that replaces np.allclose or np.array_equal later does not change its own checks
_np = SimpleNamespace(**{name: getattr(np, name) for name in (
    "allclose", "array_equal", "argwhere", "isnan", "isinf", "isfinite", "abs", "where", "tril",
    "unravel_index", "argmax", "maximum", "errstate", "finfo", "inf")})

# Boolean outputs that are attention masks (True = may attend), explained in those words;
# any other boolean output is reported by its first differing entry.
ATTENTION_MASK_OUTPUTS = ("mask", "dependence")


def _dependence_difference(got: np.ndarray, expected: np.ndarray) -> str:
    """Say, in the words of the causality experiment, where a dependence map goes wrong."""
    if _np.array_equal(got, ~expected):
        return "the map is inverted: True must mean 'output i changes when input token j changes'"
    out, token = tuple(_np.argwhere(got != expected)[0])[-2:]
    if got[out, token]:
        return f"your map says output {out} depends on input token {token}; it does not"
    return f"your map says output {out} does not depend on input token {token}; it does"


def _mask_difference(got: np.ndarray, expected: np.ndarray) -> str:
    """Say, in the words of attention, where a boolean mask goes wrong."""
    if _np.array_equal(got, ~expected):
        return "mask polarity inverted: True must mean 'may attend' (False = blocked)"
    wrong = _np.argwhere(got != expected)
    first = tuple(wrong[0])
    if got.ndim >= 2:
        q, k = first[-2], first[-1]
        if got.shape[-2] == 1:  # a padding mask (B, 1, 1, T): keys only
            b = first[0] if got.ndim == 4 else 0
            if got[first]:
                return (f"batch {b}: key {k} is padding (attention_mask 0) but the mask "
                        f"lets queries attend to it ({len(wrong)} positions wrong)")
            return (f"batch {b}: key {k} is a real token (attention_mask 1) but the mask "
                    f"blocks it ({len(wrong)} positions wrong)")
        causal_like = _np.array_equal(expected, _np.tril(expected))  # nothing above the diagonal
        if got[first] and k > q and causal_like:
            return f"query {q} may attend to key {k}: the mask leaks the future"
        if got[first]:
            return f"query {q} may attend to key {k}, which must be blocked"
        return f"query {q} may not attend to key {k}, which must be allowed"
    return f"value at {_index(first)} is {got[first]}, expected {expected[first]}"


def compare_array(got: np.ndarray, expected: np.ndarray, tol: Rule, name: str) -> str | None:
    """None when ``got`` matches ``expected``; otherwise what is wrong and where."""
    if got.shape != expected.shape:
        return f"`{name}` has shape {tuple(got.shape)}, expected {tuple(expected.shape)}"
    if expected.dtype == np.bool_:
        attention_words = name in ATTENTION_MASK_OUTPUTS
        if got.dtype != np.bool_:
            return (f"`{name}` has dtype {got.dtype}, expected torch.bool"
                    + (" (True = may attend)" if attention_words else ""))
        if not _np.array_equal(got, expected):
            if name == "dependence" and got.ndim == 2:
                return _dependence_difference(got, expected)
            if attention_words:
                return _mask_difference(got, expected)
            idx = tuple(_np.argwhere(got != expected)[0])
            return f"`{name}` differs{_at(idx)}: got {got[idx]}, expected {expected[idx]}"
        return None
    if got.dtype.kind != expected.dtype.kind or (
            expected.dtype.kind == "f" and got.dtype != expected.dtype):
        return f"`{name}` has dtype {got.dtype}, expected {expected.dtype}"
    if tol.compare == "exact" or expected.dtype.kind in "iub":
        if not _np.array_equal(got, expected):
            idx = tuple(_np.argwhere(got != expected)[0])
            return f"`{name}` differs{_at(idx)}: got {got[idx]}, expected {expected[idx]}"
        return None
    bad_nan = _np.isnan(got) & ~_np.isnan(expected)
    if bad_nan.any():
        idx = tuple(_np.argwhere(bad_nan)[0])
        hint = (" (a fully masked query row must give zeros, not NaN)"
                if name == "output" and (expected == 0).any() else "")
        return f"`{name}` contains NaN{_at(idx)}{hint}"
    wrong_inf = (_np.isinf(got) | _np.isinf(expected)) & (got != expected)
    if wrong_inf.any():  # an infinite error against an infinite allowance says nothing
        idx = tuple(_np.argwhere(wrong_inf)[0])
        return f"`{name}` differs{_at(idx)}: got {got[idx]:.6g}, expected {expected[idx]:.6g}"
    if not _np.allclose(got, expected, rtol=tol.rtol, atol=tol.atol, equal_nan=True):
        with _np.errstate(invalid="ignore"):  # -inf - -inf
            err = _np.abs(got.astype(np.float64) - expected)
        err = _np.where(got == expected, 0.0, _np.where(_np.isnan(err), _np.inf, err))
        # the entry furthest outside its tolerance (not merely the largest error, which
        # may sit at a large value where the relative tolerance allows it)
        allowed = tol.atol + tol.rtol * _np.abs(expected.astype(np.float64))
        with _np.errstate(invalid="ignore"):  # inf - inf
            excess = _np.where(err == 0, -_np.inf, _np.where(_np.isinf(err), _np.inf, err - allowed))
        idx = tuple(_np.unravel_index(_np.argmax(excess), excess.shape))
        return (f"`{name}` differs{_at(idx)}: error {err[idx]:.3g}, allowed {allowed[idx]:.3g} "
                f"({_pair(got[idx], expected[idx])}; tolerance rtol={tol.rtol:g}, atol={tol.atol:g})"
                + _float32_hint(err, expected))
    return None


def _float32_hint(err: np.ndarray, expected: np.ndarray) -> str:
    """A float64 case whose errors are all of float32 size: say where such errors come from."""
    if expected.dtype != np.float64 or not _np.isfinite(err).all():
        return ""
    # every relative error below 1e-5, compared without dividing: err / |expected| overflows
    # where an expected value is (nearly) zero and its error is not
    scale = _np.maximum(_np.abs(expected), _np.finfo(np.float64).tiny)
    if (err < 1e-5 * scale).all():
        return (". Errors this small in a float64 case come from a float32 step: a constant "
                "such as torch.sqrt(torch.tensor(d)) is float32; use math.sqrt(d) or the "
                "input's dtype")
    return ""


def compare_outputs(got: list[np.ndarray], case: Case, tol: Rule) -> str | None:
    """None when every output matches; otherwise one message that explains the first problem."""
    n = len(case.expected)
    if len(got) != n:
        names = ", ".join(tol.output_names[:n]) if len(tol.output_names) >= n else f"{n} values"
        return f"returned {len(got)} value(s), expected {n} ({names})"
    # NaN where the reference has a number is its own diagnosis: a known bug that also gives
    # NaN there would be matched by accident (NaN equals NaN when comparing)
    nan_where_number = any(g.shape == e.shape and g.dtype.kind == "f" and e.dtype.kind == "f"
                           and (_np.isnan(g) & ~_np.isnan(e)).any() for g, e in zip(got, case.expected))
    for bug, outs in ({} if nan_where_number else case.alternatives).items():
        if len(outs) == n and all(
                g.shape == o.shape and compare_array(g, o, tol, "x") is None
                for g, o in zip(got, outs)):
            if not all(compare_array(g, e, tol, "x") is None for g, e in zip(got, case.expected)):
                return tol.bug_messages.get(bug, f"your output matches a known bug: {bug}")
    for i, (g, e) in enumerate(zip(got, case.expected)):
        name = tol.output_names[i] if i < len(tol.output_names) else f"output {i}"
        problem = compare_array(g, e, tol, name)
        if problem:
            if nan_where_number and any(a.dtype.kind == "f" and _np.isnan(a).any() for a in case.inputs.values()):
                problem += (": the inputs hold NaN, and NaN x 0 is NaN, so multiplying by a 0/1 mask "
                            "does not remove them; select the entries that count (x[mask]) or "
                            "torch.where(mask, x, 0) before combining")
            return problem
    return None


# A property judges all of a check's outputs together (statistics of a random masking,
# an accuracy against held-out truth, two calls that must agree): name -> function of
# (outputs per case, cases, params) returning None or what is wrong.
PROPERTIES: dict[str, Callable[[list[list[np.ndarray]], list[Case], dict], str | None]] = {}


def judge(check: dict, cases: list[Case], results: list[tuple[list[np.ndarray], str | None]]) -> str | None:
    """The verdict on one check from its cases' (outputs, error): None when it passes,
    else one message that explains the first problem and where."""
    rule = Rule.of(check)
    for i, (case, (outputs, error)) in enumerate(zip(cases, results, strict=True)):
        where = f"case {i + 1} of {len(cases)} ({case.describe()})"
        if case.raises:
            if not (error or "").startswith(case.raises):
                did = f"raised {error}" if error else "returned a result"
                return f"{where}: `{check['function']}` {did}; with these arguments it must raise {case.raises}"
            continue
        if error:
            return f"{where}: `{check['function']}` raised {error}"
        if not rule.compare.startswith("property:"):
            problem = compare_outputs(outputs, case, rule)
            if problem:
                return f"{where}: {problem}"
    if rule.compare.startswith("property:"):
        from genlab.properties import load_all

        load_all()
        return PROPERTIES[rule.compare[len("property:"):]](
            [outputs for outputs, _ in results], cases, check.get("params", {}))
    return None


# ----------------------------------------------------------- in the student's notebook


def _manifest(assignment: str, root: Path | None = None) -> dict:
    path = (root or references_root()) / assignment / "manifest.json"
    if not path.exists():
        raise FileNotFoundError(
            f"no references for {assignment!r} at {path}. Students: open the notebook from "
            f"inside the unzipped course bundle (it holds autograder/references/), or set "
            f"{REFERENCES_ENV} to that folder. Instructors build them with "
            f"`python -m autograder references build {assignment}`")
    return json.loads(path.read_text())


class AssignmentChecks:
    """The public checks of one assignment, as called from its notebook."""

    def __init__(self, assignment: str, root: Path | None = None):
        self.assignment = assignment
        self.root = root or references_root()
        self.manifest = _manifest(assignment, self.root)

    def _checks_of(self, function: str, public: bool) -> list[tuple[str, dict]]:
        return [(name, c) for name, c in self.manifest["checks"].items()
                if c["function"] == function and c["public"] == public]

    def _run(self, function: str, fn: Callable, public: bool) -> list[tuple[str, str | None]]:
        verdicts = []
        for name, check in self._checks_of(function, public):
            cases = [Case.load(self.root / self.assignment / e["file"]) for e in check["cases"]]
            verdicts.append((name, judge(check, cases, [run_case(fn, case) for case in cases])))
        return verdicts

    def check(self, function: str, fn: Callable) -> None:
        """Run the public cases of ``function``; raise AssertionError explaining the first problem."""
        if not callable(fn):
            raise AssertionError(f"`{function}` is not a function (got {type(fn).__name__})")
        verdicts = self._run(function, fn, public=True)
        if not verdicts:
            raise AssertionError(f"no public checks for `{function}` in {self.assignment}")
        failed = [(n, p) for n, p in verdicts if p]
        if failed:
            raise AssertionError("\n".join(f"{n}: {p}" for n, p in failed))
        cases = sum(len(c["cases"]) for _, c in self._checks_of(function, True))
        print(f"✓ {function}: {cases} public case(s) match the reference. "
              "Hidden cases are graded after you submit.")

    def record(self, function: str, fn: Callable) -> None:
        """Outside grading: where the hidden references are present (the instructor's copy),
        run the hidden checks too; a student's copy has none and this does nothing."""
        verdicts = self._run(function, fn, public=False)
        for name, problem in verdicts:
            print(f"{'✓' if problem is None else '✗'} hidden check {name}"
                  + (f": {problem}" if problem else ""))


# ------------------------------------------------------------ in the kernel, at grading


def resolve(dotted: str) -> Any:
    """'torch.nn.functional.scaled_dot_product_attention' -> the object."""
    import importlib

    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


def _aten_builtins(obj: Any) -> list:
    """The builtins that run when an aten operator is called (``torch.ops.aten.<op>``, all
    its overloads, or one overload): its Python ``__call__`` is shared by every operator,
    so the tracer must watch the operator's own ``_op``."""
    if isinstance(obj, torch._ops.OpOverloadPacket):
        ops = [obj] + [getattr(obj, overload) for overload in obj.overloads()]
    elif isinstance(obj, torch._ops.OpOverload):
        ops = [obj]
    else:
        return []
    return [op._op for op in ops if getattr(op, "_op", None) is not None]


def _operator_name(op: Any) -> str | None:
    """'aten::<name>' of an aten operator or one of its overloads; None for anything else."""
    if isinstance(op, torch._ops.OpOverloadPacket):
        return op._qualified_op_name
    if isinstance(op, torch._ops.OpOverload):
        return op._schema.name
    return None


class _TorchCallWatch(torch.overrides.TorchFunctionMode):
    """The tracer's second pair of eyes: torch hands every call of its functions to the
    active function modes, also when the caller is C code (``functools.partial``, ``map``)
    that ``sys.setprofile`` cannot see."""

    def __init__(self, tracer: "CallTracer"):
        super().__init__()
        self.tracer = tracer

    def __torch_function__(self, func, types, args=(), kwargs=None):
        tracer = self.tracer
        name = tracer._builtins.get(id(func)) or tracer._operators.get(_operator_name(func))
        if name:
            tracer.used.add(name)
            sys.audit("genlab.forbidden", name)  # the grading guard reports it at once
        return func(*args, **(kwargs or {}))


class CallTracer:
    """Records which of the named callables run while it is active: Python calls and calls
    of builtins from Python code via ``sys.setprofile``, calls of torch's functions and
    operators from anywhere via a torch function mode."""

    def __init__(self, names: list[str]):
        self.used: set[str] = set()
        self._builtins: dict[int, str] = {}
        self._codes: dict[Any, str] = {}
        self._operators: dict[str, str] = {}  # 'aten::<name>' -> forbidden name
        for name in names:
            try:
                obj = inspect.unwrap(resolve(name))  # a decorated function's own code
            except (ImportError, AttributeError):
                continue
            if isinstance(obj, type):
                for method in ("__init__", "forward"):
                    code = getattr(getattr(obj, method, None), "__code__", None)
                    if code is not None:
                        self._codes[code] = name
            elif hasattr(obj, "__code__"):
                self._codes[obj.__code__] = name
            else:
                self._builtins[id(obj)] = name
            for builtin in _aten_builtins(obj):
                self._builtins[id(builtin)] = name
            operator = _operator_name(obj)
            if operator:
                self._operators[operator] = name

    def _profile(self, frame, event, arg):
        if event == "call":
            name = self._codes.get(frame.f_code)
        elif event == "c_call":
            name = self._builtins.get(id(arg))
        else:
            return
        if name:
            self.used.add(name)
            sys.audit("genlab.forbidden", name)  # the grading guard reports it at once

    def __enter__(self) -> "CallTracer":
        self._watch = _TorchCallWatch(self) if self._builtins or self._operators else None
        if self._watch is not None:
            self._watch.__enter__()
        if self._codes or self._builtins:
            self._previous = sys.getprofile()
            sys.setprofile(self._profile)
        return self

    def __exit__(self, *exc) -> None:
        if self._codes or self._builtins:
            sys.setprofile(self._previous)
        if self._watch is not None:
            stack = torch.overrides._get_current_function_mode_stack()
            if not stack or stack[-1] is not self._watch:  # the watched code took it off
                name = "torch's function-mode stack (the call tracer's watch was taken off it)"
                self.used.add(name)
                sys.audit("genlab.forbidden", name)
            else:
                self._watch.__exit__(None, None, None)


RECORD_MIME = "application/vnd.genlab.record+json"


class Recorder:
    """Runs a student's function on the grader's inputs and records the outputs as arrays.

    ``directory/inputs/<function>/*.npz`` hold inputs only. Calls listed in
    ``inputs/<function>/forbidden.json`` are traced while the function runs; the ones it
    made are saved under ``forbidden`` (and, under the grading guard, reported the moment
    they happen). Each case's outputs (keys ``out.<i>``, or ``error``) are either written
    to ``directory/outputs/<function>/<same name>.npz`` or, with ``publish=True`` (during
    grading), published as a display message of the test cell, which the executor takes
    out of the kernel at once; an audit event carries their sha256 to the grading guard
    (``autograder.guard``), which attests that this code, and no other, recorded them.
    Scoring happens elsewhere.
    """

    def __init__(self, directory: str, publish: bool = False):
        self.directory = Path(directory)
        self.publish = publish

    def __call__(self, function: str, fn: Callable | None = None) -> None:
        import base64
        import hashlib
        import io

        inputs_dir = self.directory / "inputs" / function
        forbidden_file = inputs_dir / "forbidden.json"
        forbidden = json.loads(forbidden_file.read_text()) if forbidden_file.exists() else []
        cases = [(path.stem, Case.load(path)) for path in sorted(inputs_dir.glob("*.npz"))]
        sys.audit("genlab.record.begin", function, tuple(forbidden), callable(fn))
        try:
            for name, case in cases:
                # the whole record is made under the tracer: code the notebook may have put in
                # place of what the recorder uses (numpy, base64, ...) runs traced too
                with CallTracer(forbidden if callable(fn) else []) as tracer:
                    arrays: dict[str, np.ndarray] = {}
                    if not callable(fn):
                        arrays["error"] = np.asarray(f"`{function}` is not defined as a function")
                    else:
                        outputs, error = run_case(fn, case)
                        for i, out in enumerate(outputs):
                            arrays[f"out.{i}"] = out
                        if error:
                            arrays["error"] = np.asarray(error)
                        arrays["forbidden"] = np.asarray(sorted(tracer.used), dtype=str)
                    buffer = io.BytesIO()
                    np.savez(buffer, **arrays)
                    data = base64.b64encode(buffer.getvalue()).decode()
                    sys.audit("genlab.record.output", function, name,
                              hashlib.sha256(data.encode()).hexdigest())
                if self.publish:
                    from IPython.display import publish_display_data

                    publish_display_data({RECORD_MIME: {"function": function, "case": name, "npz": data}})
                else:
                    path = self.directory / "outputs" / function / f"{name}.npz"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(buffer.getvalue())
        finally:
            sys.audit("genlab.record.end", function)
        print(f"[autograder] recorded the outputs of `{function}`")
