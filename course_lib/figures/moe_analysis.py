"""Analysis and figures for notebook 02: who goes to which expert, in bits.

* ``byte_classes``: the kind of each byte token (letter, digit, space, symbol, UTF-8 lead or continuation byte).
* ``mutual_information`` / ``conditional_mutual_information`` / ``entropy``: I(E; D), I(E; C | D), H(E) in bits,
  to measure expert specialisation by domain D or by token class C (the question DeepSeekMoE §4.5 and
  V3 §4.5.2 study with expert load statistics).
* ``moe_inputs``: what each MoE layer of a model received; ``plot_routing``: the routing playground figure.

The MoE layer itself (routing, balance, dispatch) is in ``course_lib.moe``.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from course_lib.moe import moe_layers

BYTE_CLASSES = ("letter", "digit", "space", "symbol", "utf8-lead", "utf8-cont")


def byte_classes(ids: torch.Tensor) -> torch.Tensor:
    """Token class of each byte id: index into BYTE_CLASSES.

    ASCII letters, digits, whitespace, other ASCII symbols, then the two kinds of non-ASCII UTF-8 bytes:
    lead bytes (0xC0-0xFF start a multi-byte character, e.g. a Chinese one) and continuation bytes (0x80-0xBF).
    """
    ids = torch.as_tensor(ids)
    if ids.numel() and (ids.min() < 0 or ids.max() > 255):
        raise ValueError("ids must be byte values in 0..255")
    cls = torch.full_like(ids, 3)                                         # symbol unless found below
    letter = ((ids >= 65) & (ids <= 90)) | ((ids >= 97) & (ids <= 122))
    cls[letter] = 0
    cls[(ids >= 48) & (ids <= 57)] = 1
    cls[(ids == 32) | (ids == 9) | (ids == 10) | (ids == 13)] = 2
    cls[(ids >= 0xC0)] = 4
    cls[(ids >= 0x80) & (ids < 0xC0)] = 5
    return cls


def mutual_information(a: torch.Tensor, b: torch.Tensor) -> float:
    """I(A; B) in bits from paired samples of two discrete variables (non-negative integer labels).

    I(A; B) = sum_{a,b} p(a,b) log2( p(a,b) / (p(a) p(b)) )
    """
    a, b = torch.as_tensor(a).reshape(-1).long(), torch.as_tensor(b).reshape(-1).long()
    if a.shape != b.shape:
        raise ValueError(f"a and b must pair up: {a.numel()} vs {b.numel()} samples")
    if a.numel() == 0:
        raise ValueError("a and b must not be empty")
    b = b.to(a.device)
    joint = torch.zeros(int(a.max()) + 1, int(b.max()) + 1, dtype=torch.float64, device=a.device)
    joint.index_put_((a, b), torch.ones(a.numel(), dtype=torch.float64, device=a.device), accumulate=True)
    p = joint / joint.sum()
    pa, pb = p.sum(1, keepdim=True), p.sum(0, keepdim=True)
    nz = p > 0
    return float((p[nz] * torch.log2(p[nz] / (pa * pb)[nz])).sum())


def conditional_mutual_information(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> float:
    """I(A; B | C) = sum_c p(c) I(A; B | C = c), in bits: what B tells about A once C is known."""
    a, b, c = (torch.as_tensor(t).reshape(-1).long() for t in (a, b, c))
    if not a.shape == b.shape == c.shape:
        raise ValueError("a, b and c must have the same number of samples")
    total = 0.0
    for value in c.unique():
        m = c == value
        total += m.double().mean().item() * mutual_information(a[m], b[m])
    return total


def entropy(a: torch.Tensor) -> float:
    """H(A) in bits = I(A; A)."""
    return mutual_information(a, a)


@torch.no_grad()
def moe_inputs(model: nn.Module, idx: torch.Tensor) -> list[torch.Tensor]:
    """Run ``model(idx)`` and return what each MoE layer received, flattened to (B*T, d), in layer order."""
    layers, seen = moe_layers(model), {}
    hooks = [layer.register_forward_pre_hook(lambda mod, args, i=i: seen.__setitem__(i, args[0].reshape(
        -1, args[0].shape[-1]))) for i, layer in enumerate(layers)]
    try:
        model(idx)
    finally:
        for h in hooks:
            h.remove()
    return [seen[i] for i in range(len(layers))]


@torch.no_grad()
def plot_routing(model: nn.Module, text: str, layer: int = 1, expert: int = 0, extra_bias: float = 0.0,
                 max_len: int = 64):
    """Routing playground figure: each byte's affinities s_{i,t} (colour) and its chosen experts (boxes).

    ``extra_bias`` is added to ``expert``'s aux-loss-free bias for this picture only: the boxes (selection)
    move, the colours (the affinities the gate values come from) do not. Returns the matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    from course_lib.kit import style

    layers = moe_layers(model)
    if not text:
        raise ValueError("text must not be empty")
    if not 1 <= layer <= len(layers):
        raise ValueError(f"layer must be in 1..{len(layers)} (the model's MoE layers), got {layer}")
    moe = layers[layer - 1]
    if not 0 <= expert < moe.n_routed_experts:
        raise ValueError(f"expert must be in 0..{moe.n_routed_experts - 1}, got {expert}")
    device = next(model.parameters()).device
    ids = torch.tensor([list(text.encode("utf-8"))[:max_len]], device=device)
    u = moe_inputs(model, ids)[layer - 1]
    saved = moe.e_score_correction_bias.clone()
    try:
        moe.e_score_correction_bias[expert] += extra_bias
        _, chosen, scores = moe.router(u)
    finally:
        moe.e_score_correction_bias.copy_(saved)
    fig, ax = style.subplots(1, 1, width=9, height=0.9 + 0.18 * ids.shape[1])
    ax.imshow(scores.cpu(), cmap="magma", aspect="auto", vmin=0, vmax=1)
    for t, row in enumerate(chosen.cpu().tolist()):
        for e in row:
            ax.add_patch(plt.Rectangle((e - 0.5, t - 0.5), 1, 1, fill=False, edgecolor="white", lw=1.5))
    labels = [{32: "␣", 10: "↵"}.get(b, repr(bytes([b]))[2:-1]) for b in ids[0].tolist()]
    ax.set(yticks=range(len(labels)), yticklabels=labels, xticks=range(moe.n_routed_experts),
           xlabel="routed expert",
           title=f"layer {layer}: affinities s (colour), chosen experts (boxes); bias +{extra_bias:g} on expert {expert}")
    ax.grid(False)
    return fig
