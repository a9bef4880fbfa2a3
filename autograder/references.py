"""Build and verify the reference outputs of an assignment.

``build``: run genlab's reference implementation on every case of every check (inputs
from fixed seeds), write ``public/<check>-<i>.npz`` or ``hidden/<check>-<i>.npz`` and
``manifest.json`` (sha256 of each file, generating function, torch version, dtype,
tolerance). Files are byte-for-byte reproducible.

``verify``: on every device present (the CPU always, CUDA where there is a GPU),
recompute every case and record in ``verified_on`` the device's name and the largest
deviation from the stored reference; check each file's sha256; set each float check's
tolerance to ``max(floor, SAFETY_MARGIN * largest deviation seen)`` so that a correct
solution passes on every device verified (the committed manifests: the CPU so far;
``make gpu-check`` adds CUDA).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import platform
import shutil
from pathlib import Path

import numpy as np
import torch

from autograder import spec as spec_module
from genlab.checks import Case, call_case, outputs_as_arrays, resolve, save_case

REFERENCES = Path(__file__).resolve().parent / "references"
SAFETY_MARGIN = 10.0


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_reference(dotted: str, inputs: dict[str, np.ndarray], device: str = "cpu") -> list[np.ndarray]:
    """Call a reference implementation on a case's inputs on ``device``; outputs on the CPU."""
    with torch.device(device):  # factory calls (causal_mask(T)) follow the device too
        return outputs_as_arrays(call_case(resolve(dotted), inputs, device))


def _outcome(dotted: str, inputs: dict[str, np.ndarray], device: str = "cpu") -> tuple[list[np.ndarray], str | None]:
    """(outputs, None), or ([], the exception's class name) for a call that must raise: the
    reference raising a ValueError on arguments the text rules out makes raising the answer."""
    try:
        return run_reference(dotted, inputs, device), None
    except ValueError as exc:
        return [], type(exc).__name__


def _arrays(inputs: dict) -> dict[str, np.ndarray]:
    return {k: v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v) for k, v in inputs.items()}


def build(assignment: str, root: Path = REFERENCES) -> Path:
    """(Re)build every reference file and the manifest of ``assignment``."""
    spec = spec_module.load(assignment)
    out = root / assignment
    for part in ("public", "hidden"):
        shutil.rmtree(out / part, ignore_errors=True)
    checks = {}
    for check in spec.checks:
        cases = []
        for i, case in enumerate(check.cases):
            inputs = _arrays(case.make())
            expected, raises = _outcome(check.reference, inputs)
            alternatives = {}
            for bug, (variant, _) in ({} if raises else check.bugs).items():
                try:
                    alternatives[bug] = run_reference(variant, inputs)
                except Exception:  # a variant that raises here (a test model refusing it) is no diagnosis
                    pass
            rel = f"{'public' if check.public else 'hidden'}/{check.name}-{i}.npz"
            save_case(out / rel, inputs, expected, alternatives, case.meta, raises)
            cases.append({"file": rel, "sha256": sha256(out / rel), "params": case.meta})
        floor = spec_module.TOLERANCE_FLOOR[check.dtype]
        checks[check.name] = {
            "function": check.function, "cell": check.cell, "points": check.points,
            "public": check.public, "description": check.description,
            "reference": check.reference, "dtype": check.dtype, "compare": check.compare,
            "rtol": floor["rtol"], "atol": floor["atol"], "outputs": list(check.outputs),
            "forbidden": list(check.forbidden),
            "bugs": {bug: message for bug, (_, message) in check.bugs.items()},
            "params": check.params, "cases": cases, "verified_on": {},
        }
    manifest = {
        "assignment": assignment, "notebook": spec.notebook, "max_points": spec.max_points,
        "generated_by": f"python -m autograder references build {assignment}",
        "torch_version": torch.__version__, "numpy_version": np.__version__,
        "checks": checks, "verified_on": {},
    }
    write_manifest(out, manifest)
    return out


def write_manifest(folder: Path, manifest: dict) -> None:
    path = folder / "manifest.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=False) + "\n")
    tmp.replace(path)


def load_manifest(assignment: str, root: Path = REFERENCES) -> dict:
    path = root / assignment / "manifest.json"
    if not path.exists():
        raise SystemExit(f"no references at {path}: run `python -m autograder references build {assignment}`")
    return json.loads(path.read_text())


def devices() -> list[tuple[str, str, str]]:
    """(device class, torch device, human name) for every device present."""
    found = [("cpu", "cpu", platform.processor() or platform.machine())]
    if torch.cuda.is_available():
        found.append(("cuda", "cuda", torch.cuda.get_device_name(0)))
    return found


def max_deviation(got: list[np.ndarray], expected: list[np.ndarray]) -> float:
    worst = 0.0
    for g, e in zip(got, expected, strict=True):
        if g.shape != e.shape:
            return float("inf")
        if e.dtype == np.bool_ or e.dtype.kind in "iuUSb":
            worst = max(worst, float((g != e).sum()))  # exact checks: count of differing entries
        else:
            with np.errstate(invalid="ignore"):  # -inf - -inf
                diff = np.abs(g.astype(np.float64) - e.astype(np.float64))
            diff = np.where(g == e, 0.0, np.where(np.isnan(diff), np.inf, diff))
            worst = max(worst, float(diff.max()) if diff.size else 0.0)
    return worst


def verify(assignment: str, root: Path = REFERENCES) -> dict:
    """Recompute every case on every device present; update ``verified_on`` and tolerances.

    Raises SystemExit when a file's sha256 differs from the manifest or an exact check
    (mask, token ids) differs on some device."""
    manifest = load_manifest(assignment, root)
    folder = root / assignment
    today = _dt.date.today().isoformat()
    problems = []
    for device_class, device, name in devices():
        overall = 0.0
        for check_name, check in manifest["checks"].items():
            worst = 0.0
            for entry in check["cases"]:
                path = folder / entry["file"]
                if sha256(path) != entry["sha256"]:
                    problems.append(f"{entry['file']}: sha256 differs from the manifest")
                    continue
                case = Case.load(path)
                got, raised = _outcome(check["reference"], case.inputs, device)
                if raised != case.raises:
                    problems.append(f"{entry['file']}: on {name} the reference "
                                    + (f"raised {raised}" if raised else "returned a result")
                                    + (f", not {case.raises}" if case.raises else ""))
                    continue
                worst = max(worst, max_deviation(got, case.expected))
            check["verified_on"][device_class] = {"device": name, "max_deviation": worst,
                                                  "date": today, "torch": torch.__version__}
            if check["compare"] == "exact" or check["dtype"] in ("bool", "int64"):
                if worst != 0:
                    problems.append(f"{check_name}: exact check differs on {name} ({worst:g} entries)")
            else:
                floor = spec_module.TOLERANCE_FLOOR[check["dtype"]]["atol"]
                check["atol"] = max(check["atol"], floor, SAFETY_MARGIN * worst)
            overall = max(overall, worst)
        manifest["verified_on"][device_class] = {"device": name, "max_deviation": overall,
                                                 "date": today, "torch": torch.__version__}
    write_manifest(folder, manifest)
    if problems:
        raise SystemExit("verification failed:\n  " + "\n  ".join(problems))
    return manifest["verified_on"]


def public_manifest(manifest: dict) -> dict:
    """The manifest students receive: public checks only."""
    public = dict(manifest)
    public["checks"] = {n: c for n, c in manifest["checks"].items() if c["public"]}
    public["max_points"] = None
    return public
