"""course_lib.kit.validate: each check returns what it accepts and rejects bad input with a one-line ValueError that
names the parameter and shows the value it got."""
import pytest
import torch

from course_lib.kit import validate as v


def _rejects(fn, *args, name, got, **kwargs):
    with pytest.raises(ValueError) as err:
        fn(*args, **kwargs)
    msg = str(err.value)
    assert msg.startswith(name + " ") and got in msg and "\n" not in msg, msg
    return msg


@pytest.mark.parametrize("good", [1, 7, 2 ** 40])
def test_positive_int_accepts(good):
    assert v.positive_int("n_heads", good) == good


@pytest.mark.parametrize("bad", [0, -3, 2.0, True, "4", None])
def test_positive_int_rejects(bad):
    msg = _rejects(v.positive_int, "n_heads", bad, name="n_heads", got=repr(bad))
    assert msg == f"n_heads must be a positive int, got {bad!r}"


def test_non_negative_int():
    assert v.non_negative_int("start_pos", 0) == 0 and v.non_negative_int("start_pos", 5) == 5
    for bad in (-1, 1.5, False, None):
        _rejects(v.non_negative_int, "start_pos", bad, name="start_pos", got=repr(bad))
    assert "non-negative int" in _rejects(v.non_negative_int, "start_pos", -1, name="start_pos", got="-1")


def test_int_at_least():
    assert v.int_at_least("max_ngram", 2, 2) == 2 and v.int_at_least("n_shared_experts", 0, 0) == 0
    msg = _rejects(v.int_at_least, "max_ngram", 1, 2, " (bigrams and up)", name="max_ngram", got="1")
    assert msg == "max_ngram must be an int >= 2 (bigrams and up), got 1"
    for bad in (3.0, True, "3"):
        _rejects(v.int_at_least, "max_ngram", bad, 2, name="max_ngram", got=repr(bad))


def test_positive_number():
    assert v.positive_number("norm_eps", 1e-6) == 1e-6 and v.positive_number("lr_mult", 3) == 3
    assert v.positive_number("norm_eps", None, allow_none=True) is None
    for bad in (0, -1.0, float("nan"), True, "1", None):
        _rejects(v.positive_number, "norm_eps", bad, name="norm_eps", got=repr(bad))
    assert "or None" in _rejects(v.positive_number, "norm_eps", 0.0, allow_none=True, name="norm_eps", got="0.0")


def test_in_unit_interval():
    for good in (0, 0.0, 0.25, 1, 1.0):
        assert v.in_unit_interval("alpha", good) == good
    for bad in (-0.1, 1.5, float("nan"), True, "0.5", None):
        _rejects(v.in_unit_interval, "alpha", bad, name="alpha", got=repr(bad))
    assert v.in_unit_interval("top_p", 1.0, include_zero=False) == 1.0
    msg = _rejects(v.in_unit_interval, "top_p", 0.0, include_zero=False, name="top_p", got="0.0")
    assert msg == "top_p must be in (0, 1], got 0.0"
    assert _rejects(v.in_unit_interval, "alpha", 2, name="alpha", got="2") == "alpha must be in [0, 1], got 2"


def test_one_of():
    assert v.one_of("path", "naive", ("naive", "absorbed")) == "naive"
    assert v.one_of("preset", "tiny", sorted({"tiny": 1, "small": 2})) == "tiny"
    msg = _rejects(v.one_of, "path", "fast", ("naive", "absorbed"), name="path", got="'fast'")
    assert msg == "path must be one of ('naive', 'absorbed'), got 'fast'"
    _rejects(v.one_of, "kind", ["csa"], {"csa": 1}, name="kind", got="['csa']")     # unhashable: still a ValueError


def test_tensor_shape():
    x = torch.zeros(2, 3, 8)
    assert v.tensor_shape("x", x, ("batch", "time", 8)) is x
    msg = _rejects(v.tensor_shape, "x", torch.zeros(2, 3), ("batch", "time", 8), name="x", got="(2, 3)")
    assert msg == "x must have shape (batch, time, 8), got (2, 3)"
    _rejects(v.tensor_shape, "x", torch.zeros(2, 3, 4), ("batch", "time", 8), name="x", got="(2, 3, 4)")
    _rejects(v.tensor_shape, "x", [[1.0]], ("batch", "time", 8), name="x", got="list")


def test_numpy_integers_are_ints_but_bool_is_not():
    import numpy as np
    from course_lib.kit.validate import positive_int
    assert positive_int("context", np.int64(4096)) == 4096
    with pytest.raises(ValueError, match="context must be a positive int, got True"):
        positive_int("context", True)
