"""course_lib.figures.moe_analysis: byte classes and information measures on small hand-made inputs."""
import math

import pytest
import torch

from course_lib.figures.moe_analysis import (BYTE_CLASSES, byte_classes, conditional_mutual_information, entropy,
                                             mutual_information)


def test_byte_classes_at_every_boundary():
    cases = {0x40: "symbol", 0x41: "letter", 0x5A: "letter", 0x5B: "symbol", 0x60: "symbol", 0x61: "letter",
             0x7A: "letter", 0x7B: "symbol", 0x2F: "symbol", 0x30: "digit", 0x39: "digit", 0x3A: "symbol",
             0x09: "space", 0x0A: "space", 0x0D: "space", 0x0B: "symbol", 0x00: "symbol", 0x7F: "symbol",
             0x80: "utf8-cont", 0xBF: "utf8-cont", 0xC0: "utf8-lead", 0xE5: "utf8-lead", 0xFF: "utf8-lead"}
    got = byte_classes(torch.tensor(list(cases)))
    assert [BYTE_CLASSES[i] for i in got.tolist()] == list(cases.values())
    # "床" is E5 BA 8A in UTF-8: one lead byte, two continuation bytes
    assert [BYTE_CLASSES[i] for i in byte_classes(torch.tensor(list("床".encode()))).tolist()] == \
        ["utf8-lead", "utf8-cont", "utf8-cont"]
    assert byte_classes(torch.zeros(0, dtype=torch.long)).numel() == 0


@pytest.mark.parametrize("bad", [[256], [-1], [65, 300]])
def test_byte_classes_rejects_non_bytes(bad):
    with pytest.raises(ValueError, match="ids"):
        byte_classes(torch.tensor(bad))


def _mi_by_hand(pairs):
    """I(A; B) from a list of (a, b) samples, written out with math.log2."""
    n = len(pairs)
    joint = {}
    for p in pairs:
        joint[p] = joint.get(p, 0) + 1 / n
    pa = {a: sum(v for (x, _), v in joint.items() if x == a) for a, _ in joint}
    pb = {b: sum(v for (_, y), v in joint.items() if y == b) for _, b in joint}
    return sum(v * math.log2(v / (pa[a] * pb[b])) for (a, b), v in joint.items())


def test_mutual_information_of_a_two_by_two_table():
    # counts (a, b): (0, 0) x2, (0, 1) x1, (1, 1) x1 -> 0.5 log2(4/3) + 0.25 log2(2/3) + 0.25 log2(2)
    a, b = torch.tensor([0, 0, 0, 1]), torch.tensor([0, 0, 1, 1])
    expected = 0.5 * math.log2(4 / 3) + 0.25 * math.log2(2 / 3) + 0.25
    assert mutual_information(a, b) == pytest.approx(expected)
    assert mutual_information(b, a) == pytest.approx(expected)                   # symmetric
    assert mutual_information(a + 5, 7 * b) == pytest.approx(expected)          # only the pairing matters


def test_mutual_information_matches_the_formula_and_its_bounds_on_random_labels():
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 4, (300,), generator=g)
    b = (a + torch.randint(0, 2, (300,), generator=g)) % 5                     # b depends on a, noisily
    mi = mutual_information(a, b)
    assert mi == pytest.approx(_mi_by_hand(list(zip(a.tolist(), b.tolist()))))
    assert 0 < mi <= min(entropy(a), entropy(b)) + 1e-12
    assert entropy(torch.tensor([3, 3, 3])) == 0.0
    assert entropy(torch.tensor([0, 1, 1, 1])) == pytest.approx(-(0.25 * math.log2(0.25) + 0.75 * math.log2(0.75)))


def test_conditional_mutual_information_obeys_the_chain_rule():
    g = torch.Generator().manual_seed(1)
    c = torch.randint(0, 3, (400,), generator=g)
    b = torch.randint(0, 2, (400,), generator=g)
    a = (b + c + (torch.rand(400, generator=g) < 0.2).long()) % 3
    # I(A; B, C) = I(A; C) + I(A; B | C), with the pair (B, C) coded as one label
    assert mutual_information(a, b * 3 + c) == pytest.approx(
        mutual_information(a, c) + conditional_mutual_information(a, b, c))
    assert conditional_mutual_information(a, b, torch.zeros_like(a)) == pytest.approx(mutual_information(a, b))


@pytest.mark.parametrize("call,match", [
    (lambda: mutual_information(torch.tensor([0, 1]), torch.tensor([0, 1, 1])), "pair up"),
    (lambda: mutual_information(torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long)), "empty"),
    (lambda: conditional_mutual_information(torch.tensor([0]), torch.tensor([0]), torch.tensor([0, 1])), "same number"),
])
def test_bad_input_raises_one_line_value_error(call, match):
    with pytest.raises(ValueError, match=match) as err:
        call()
    assert "\n" not in str(err.value)
