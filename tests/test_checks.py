"""genlab.checks: the diagnostics students read, and the recording that grading relies on."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from genlab.checks import (Case, CallTracer, Recorder, Rule, compare_array, compare_outputs,
                           outputs_as_arrays, run_case, save_case, write_npz)
from genlab.masks import causal_mask, padding_mask

EXACT = Rule(compare="exact", rtol=0, atol=0, output_names=("mask",))
CLOSE = Rule(rtol=1e-5, atol=1e-6)


def test_future_leak_is_named_by_query_and_key():
    expected = causal_mask(6).numpy()
    got = expected.copy()
    got[2, 5] = True
    assert compare_array(got, expected, EXACT, "mask") == "query 2 may attend to key 5: the mask leaks the future"


def test_inverted_polarity_is_recognised():
    expected = padding_mask(torch.tensor([[1, 1, 0]])).numpy()
    assert "polarity inverted" in compare_array(~expected, expected, EXACT, "mask")
    expected = causal_mask(4).numpy()
    assert "polarity inverted" in compare_array(~expected, expected, EXACT, "mask")


def test_padding_key_message_names_batch_and_key():
    expected = padding_mask(torch.tensor([[1, 1, 1], [1, 0, 0]])).numpy()
    got = expected.copy()
    got[1, 0, 0, 2] = True
    assert compare_array(got, expected, EXACT, "mask").startswith("batch 1: key 2 is padding")


def test_shape_dtype_nan_and_value_messages():
    expected = np.zeros((2, 4, 8), dtype=np.float32)
    assert compare_array(np.zeros((2, 8, 4), np.float32), expected, CLOSE, "output") == \
        "`output` has shape (2, 8, 4), expected (2, 4, 8)"
    assert "dtype float64, expected float32" in compare_array(np.zeros((2, 4, 8)), expected, CLOSE, "output")
    nan = expected.copy()
    nan[1, 2, 3] = np.nan
    assert "contains NaN at [1, 2, 3]" in compare_array(nan, expected, CLOSE, "output")
    off = expected.copy()
    off[0, 1, 2] = 0.5
    message = compare_array(off, expected, CLOSE, "output")
    assert "differs at [0, 1, 2]: error 0.5, allowed 1e-06 (got 0.5, expected 0;" in message
    assert compare_array(expected + 1e-7, expected, CLOSE, "output") is None
    assert "torch.bool" in compare_array(np.ones((2, 2), np.int64), np.ones((2, 2), bool), EXACT, "mask")


def test_known_bug_is_reported_by_name():
    case = Case(inputs={}, expected=[np.ones(3, np.float32)],
                alternatives={"no_scale": [np.full(3, 2.0, np.float32)]})
    rule = Rule(bug_messages={"no_scale": "missing 1/sqrt(d)"})
    assert compare_outputs([np.full(3, 2.0, np.float32)], case, rule) == "missing 1/sqrt(d)"
    assert compare_outputs([np.ones(3, np.float32)], case, rule) is None
    assert "returned 2 value(s), expected 1" in compare_outputs([np.ones(3), np.ones(3)], case, rule)


def test_run_case_reports_errors_instead_of_raising():
    case = Case(inputs={"T": np.asarray(3)})

    def not_done(T):
        raise NotImplementedError()

    assert run_case(not_done, case) == ([], "NotImplementedError: not implemented yet")
    outputs, error = run_case(lambda T: "a string", case)
    assert outputs == [] and "is a str, expected a torch.Tensor" in error
    outputs, error = run_case(lambda T: causal_mask(T), case)
    assert error is None and np.array_equal(outputs[0], causal_mask(3).numpy())


def test_lying_objects_are_reduced_to_plain_arrays():
    class AlwaysEqual(torch.Tensor):
        def __eq__(self, other):
            return True

        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            if func is torch.Tensor.numpy:  # lie about the values when asked politely
                return np.ones((2, 2))
            return super().__torch_function__(func, types, args, kwargs or {})

    liar = torch.zeros(2, 2).as_subclass(AlwaysEqual)
    (array,) = outputs_as_arrays(liar)
    assert type(array) is np.ndarray and array.sum() == 0

    class Fake:
        def __eq__(self, other):
            return True

    with pytest.raises(TypeError, match="Fake"):
        outputs_as_arrays(Fake())


def test_npz_files_are_reproducible_and_pickle_free(tmp_path):
    inputs = {"q": np.arange(6.0).reshape(2, 3), "T": 4, "attention": "genlab:causal_attention"}
    save_case(tmp_path / "a.npz", inputs, [np.eye(2)], {"bug": [np.zeros(2)]}, {"seed": 1})
    save_case(tmp_path / "b.npz", inputs, [np.eye(2)], {"bug": [np.zeros(2)]}, {"seed": 1})
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    case = Case.load(tmp_path / "a.npz")  # np.load(allow_pickle=False) inside
    assert case.meta == {"seed": 1} and set(case.inputs) == {"q", "T", "attention"}
    assert np.array_equal(case.alternatives["bug"][0], np.zeros(2))
    write_npz(tmp_path / "obj.npz", {"x": np.array([1, 2])})
    with pytest.raises(ValueError):
        write_npz(tmp_path / "obj2.npz", {"x": np.array([object()], dtype=object)})


def test_call_tracer_sees_aliased_and_indirect_calls():
    sdpa = F.scaled_dot_product_attention  # an alias taken before tracing starts
    q = torch.randn(1, 1, 3, 4)
    names = ["torch.nn.functional.scaled_dot_product_attention", "genlab.masks.causal_mask",
             "torch.nn.MultiheadAttention"]
    with CallTracer(names) as tracer:
        sdpa(q, q, q)
        (lambda: causal_mask(3))()
    assert tracer.used == {"torch.nn.functional.scaled_dot_product_attention", "genlab.masks.causal_mask"}
    with CallTracer(names) as tracer:
        torch.nn.MultiheadAttention(4, 1, batch_first=True)(q[0], q[0], q[0])
    assert "torch.nn.MultiheadAttention" in tracer.used
    with CallTracer(names) as tracer:
        torch.softmax(q, -1)
    assert tracer.used == set()


def test_call_tracer_sees_aten_operators_however_they_are_called():
    """torch's private attention kernels reached through torch.ops.aten: the packet, an
    overload, getattr; another aten operator is not mistaken for them."""
    q = torch.randn(1, 1, 3, 4)
    name = "torch.ops.aten._scaled_dot_product_attention_math"
    calls = [lambda: torch.ops.aten._scaled_dot_product_attention_math(q, q, q),
             lambda: torch.ops.aten._scaled_dot_product_attention_math.default(q, q, q),
             lambda: getattr(torch.ops.aten, "_scaled_dot_product_attention_math")(q, q, q)]
    for call in calls:
        with CallTracer([name]) as tracer:
            call()
        assert tracer.used == {name}
    with CallTracer([name]) as tracer:
        torch.ops.aten.relu(q)
    assert tracer.used == set()


def test_recorder_writes_outputs_errors_and_traced_calls(tmp_path):
    inputs = tmp_path / "inputs" / "causal_mask"
    write_npz(inputs / "c-0.npz", {"in.T": np.asarray(3)})
    (inputs / "forbidden.json").write_text(json.dumps(["genlab.masks.causal_mask"]))
    Recorder(str(tmp_path))("causal_mask", lambda T: causal_mask(T))
    with np.load(tmp_path / "outputs" / "causal_mask" / "c-0.npz", allow_pickle=False) as z:
        assert np.array_equal(z["out.0"], causal_mask(3).numpy())
        assert list(z["forbidden"]) == ["genlab.masks.causal_mask"]
    Recorder(str(tmp_path))("causal_mask", None)
    with np.load(tmp_path / "outputs" / "causal_mask" / "c-0.npz", allow_pickle=False) as z:
        assert "not defined" in str(z["error"])


def test_the_readme_examples_are_what_the_public_checks_print():
    """README.md shows students four check messages; each is printed, word for word, by the
    public checks of assignment 1 for the bug it illustrates."""
    import math
    import re

    from conftest import REPO
    from genlab.checks import AssignmentChecks

    def scores(q, k, v, attn_mask, scale):
        s = q @ k.transpose(-2, -1) * scale  # (B, H, Tq, Tk)
        if attn_mask is not None:
            s = s.masked_fill(~attn_mask, torch.finfo(s.dtype).min)
        return s.softmax(-1)

    def transposed(q, k, v, attn_mask=None, is_causal=False, **_):
        weights = scores(q, k, v, attn_mask, 1 / math.sqrt(q.size(-1)))
        return (weights @ v).transpose(-2, -1), weights

    def unscaled(q, k, v, attn_mask=None, is_causal=False, **_):
        weights = scores(q, k, v, attn_mask, 1.0)
        return weights @ v, weights

    bugs = [("causal_mask", lambda T: torch.ones(T, T, dtype=torch.bool).tril(1)),
            ("padding_mask", lambda attention_mask: ~padding_mask(attention_mask)),
            ("scaled_dot_product_attention", transposed),
            ("scaled_dot_product_attention", unscaled)]
    checks = AssignmentChecks("01_attention")
    printed = []
    for name, function in bugs:
        with pytest.raises(AssertionError) as failure:
            checks.check(name, function)
        printed.append(str(failure.value).splitlines()[0])
    readme = (REPO / "README.md").read_text()
    [example] = re.findall(r"```\n(causal_mask: .*?)\n```", readme, flags=re.S)
    assert example.splitlines() == printed


def test_the_reported_entry_is_the_one_furthest_outside_its_tolerance():
    """A large value with a large but allowed error is not the entry to blame."""
    rule = Rule(rtol=1e-3, atol=1e-6)
    expected = np.array([1000.0, 1.0], dtype=np.float32)
    got = np.array([1000.5, 1.01], dtype=np.float32)  # 0.5 is within 1e-3 * 1000; 0.01 is not
    message = compare_array(got, expected, rule, "output")
    assert "differs at [1]: error 0.01, allowed 0.001" in message


def test_values_that_differ_print_differently_and_float32_steps_are_named():
    expected = np.array([-0.8073820012345678])
    got = expected * (1 + 3e-8)  # what a float32 1/sqrt(d) does to a float64 result
    message = compare_array(got, expected, Rule(rtol=1e-9, atol=1e-10), "output")
    assert "got -0.8073820255, expected -0.8073820012" in message
    assert "torch.sqrt(torch.tensor(d)) is float32" in message
    big = compare_array(expected + 0.1, expected, Rule(rtol=1e-9, atol=1e-10), "output")
    assert "float32" not in big, "a real error is not blamed on precision"


def test_scalar_outputs_have_no_index_and_numpy_scalars_are_numbers():
    message = compare_array(np.asarray(6320), np.asarray(6656), EXACT, "flops")
    assert message == "`flops` differs: got 6320, expected 6656"
    assert outputs_as_arrays((np.int64(3), np.float32(0.5), np.bool_(True), 7)) == [3, 0.5, True, 7]

    class Sneaky(np.int64):  # a numpy subclass may lie about itself: refused as before
        pass

    with pytest.raises(Exception, match="expected a torch.Tensor, a numpy array or a Python number"):
        outputs_as_arrays(Sneaky(3))


def test_object_arrays_are_refused_with_a_message_not_a_crash(tmp_path):
    labels = np.array(["matmul", "softmax"], dtype=object)
    outputs, error = run_case(lambda: labels, Case(inputs={}))
    assert outputs == [] and "dtype object" in error and "np.array(labels) of str" in error


def test_infinite_entries_that_agree_are_never_the_ones_blamed():
    expected = np.array([[-np.inf, 0.5, 1.0]], dtype=np.float32)
    got = np.array([[-np.inf, 0.9, 1.0]], dtype=np.float32)
    message = compare_array(got, expected, CLOSE, "filtered")
    assert "differs at [0, 1]" in message and "got 0.9" in message
    assert "differs at [0, 0]" in compare_array(np.array([[0.0, 0.5, 1.0]], dtype=np.float32),
                                               expected, CLOSE, "filtered")


def test_a_persistent_buffer_is_called_a_buffer():
    from genlab.checks import _buffer_hint

    class Attention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c_attn = torch.nn.Linear(4, 12)
            self.register_buffer("bias", torch.ones(4, 4).tril())

    hint = _buffer_hint(Attention(), ["bias"])
    assert "bias is a buffer" in hint and "persistent=False" in hint
    assert _buffer_hint(Attention(), ["c_attn.extra"]) == ""
