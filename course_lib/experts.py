"""The routed experts of an MoE layer: N_r SwiGLUs with stacked weights, run by one grouped matrix multiply.

``course_lib.moe`` holds the technique (routing, balance, the layer); this module holds how the chosen experts are
computed efficiently. Every expert computes ``course_lib.layers.swiglu``, the course's one SwiGLU definition.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from course_lib.kit.validate import one_of
from course_lib.layers import swiglu

SCORING_FUNCS = ("sigmoid", "softmax")   # V3 scores experts with a sigmoid, V2 with a softmax
DISPATCH_MODES = ("sparse", "loop")       # MoE.forward: run each expert on its tokens, or token by token (teaching)

_GROUPED_MM_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class RoutedExperts(nn.Module):
    """The N_r routed experts: N_r SwiGLUs whose weights are stacked into two 3-D tensors.

    ``gate_up[e]`` (2h, d) = [W1; W3] of ``layers.SwiGLU`` stacked (gate rows first, then up) and ``down[e]``
    (d, h) = its W2: the layout of transformers' ``DeepseekV3Experts``; both compute ``layers.swiglu``. Stacking
    costs nothing in readability (``expert(e, x)`` runs one expert) and lets one *grouped* matrix multiply run
    every expert on its own block of rows: the kernel DeepSeek's DeepGEMM provides on GPUs and
    ``torch.nn.functional.grouped_mm`` on recent PyTorch.
    """

    def __init__(self, n_experts: int, d_model: int, hidden: int):
        super().__init__()
        self.n_experts, self.hidden = n_experts, hidden
        self.gate_up = nn.Parameter(torch.empty(n_experts, 2 * hidden, d_model))
        self.down = nn.Parameter(torch.empty(n_experts, d_model, hidden))
        for e in range(n_experts):
            # the default init of nn.Linear, expert by expert, so a stacked expert starts like a separate SwiGLU
            nn.init.kaiming_uniform_(self.gate_up[e], a=5 ** 0.5)
            nn.init.kaiming_uniform_(self.down[e], a=5 ** 0.5)

    def __len__(self) -> int:
        return self.n_experts

    def expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """FFN_e(x) = W2_e swiglu(W1_e x, W3_e x) for one expert e: the same computation as layers.SwiGLU."""
        gate, up = F.linear(x, self.gate_up[e]).chunk(2, dim=-1)
        return F.linear(swiglu(gate, up), self.down[e])

    def forward(self, x_sorted: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """Rows of ``x_sorted`` grouped by expert (``counts[e]`` rows for expert e, in order) -> FFN_e(row) each."""
        if self._grouped_mm_ok(x_sorted):
            # one grouped GEMM per projection: group e = rows offs[e-1]:offs[e] times expert e's matrix
            offs = counts.cumsum(0).to(torch.int32)
            gate, up = F.grouped_mm(x_sorted, self.gate_up.transpose(1, 2), offs=offs).chunk(2, dim=-1)
            return F.grouped_mm(swiglu(gate, up), self.down.transpose(1, 2), offs=offs)
        return self.per_expert(x_sorted, counts)

    def per_expert(self, x_sorted: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """forward's portable path (any dtype, device and autograd): one matmul pair per expert that has tokens."""
        outs = []
        chunks = x_sorted.split(counts.tolist())
        # unbind once: its backward writes all experts' gradients into the stacked tensor in one go
        for chunk, w_gate_up, w_down in zip(chunks, self.gate_up.unbind(0), self.down.unbind(0)):
            if chunk.shape[0]:
                gate, up = F.linear(chunk, w_gate_up).chunk(2, dim=-1)
                outs.append(F.linear(swiglu(gate, up), w_down))
        return torch.cat(outs) if outs else x_sorted.new_zeros(0, x_sorted.shape[-1])

    def gathered(self, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """FFN_e(x_t) for each expert e = ``indices[t, j]`` (N, k) chosen by each of the N tokens x (N, d): (N, k, d).

        For a handful of tokens (a decode step, the two-token verify pass of speculative decoding) sorting the slots
        by expert and grouping them costs more than the products, and each extra token adds experts to call. Here
        the N*k chosen experts' matrices are gathered (index_select on the stacked weights) and each slot's row is
        multiplied by its own copy, one batched matmul per projection: the same dozen ops for 2 tokens as for 1.
        It copies N*k experts' weights, so MoE uses it only while N*k is at most the number of experts, and only at
        inference (training keeps the sorted grouped path)."""
        n, k = indices.shape
        flat = indices.reshape(-1)
        rows = x.repeat_interleave(k, dim=0).unsqueeze(1)                        # (N*k, 1, d): slot (t, j) = x_t
        # row times W^T: (1, d) @ (d, 2h) per slot; on CPU this is faster than W @ column (measured)
        gate, up = torch.bmm(rows, self.gate_up.index_select(0, flat).transpose(1, 2)).chunk(2, dim=-1)
        y = torch.bmm(swiglu(gate, up), self.down.index_select(0, flat).transpose(1, 2))
        return y.view(n, k, y.shape[-1])

    def _grouped_mm_ok(self, x: torch.Tensor) -> bool:
        """Use F.grouped_mm where this PyTorch has a kernel for the case: inference (PyTorch 2.13 has no CPU
        backward), CPU (its CUDA kernels want bfloat16 on recent GPUs), float32/bfloat16/float16 and rows
        whose byte length is a multiple of 16 (the kernel's alignment rule). Everything else takes the loop."""
        if not hasattr(F, "grouped_mm"):
            return False
        if x.device.type != "cpu" or x.dtype not in _GROUPED_MM_DTYPES:
            return False
        if torch.is_grad_enabled() and (x.requires_grad or self.gate_up.requires_grad):
            return False
        size = x.element_size()
        return (x.shape[-1] * size) % 16 == 0 and (self.hidden * size) % 16 == 0


def check_moe_config(*, d_model, n_routed_experts, n_shared_experts, num_experts_per_tok, moe_intermediate_size,
                     scoring_func, n_group, topk_group, bias_update_speed, aux_loss_alpha, seq_aux_loss_alpha,
                     dispatch) -> None:
    """course_lib.moe.MoE's settings, by keyword under MoE's (DeepseekV3Config's) names: bad ones fail early with a
    one-line message naming the parameter."""
    n_routed, n_shared, top_k, hidden = n_routed_experts, n_shared_experts, num_experts_per_tok, moe_intermediate_size
    if d_model < 1:
        raise ValueError(f"d_model must be >= 1, got {d_model}")
    if n_routed < 1:
        raise ValueError(f"n_routed_experts must be >= 1, got {n_routed}")
    if n_shared < 0:
        raise ValueError(f"n_shared_experts must be >= 0, got {n_shared}")
    if hidden < 1:
        raise ValueError(f"moe_intermediate_size must be >= 1, got {hidden}")
    if not 1 <= top_k <= n_routed:
        raise ValueError(f"num_experts_per_tok must be in 1..n_routed_experts={n_routed}, got {top_k}")
    one_of("scoring_func", scoring_func, SCORING_FUNCS)
    if n_group < 1 or n_routed % n_group:
        raise ValueError(f"n_group must be >= 1 and divide n_routed_experts={n_routed}, got {n_group}")
    if not 1 <= topk_group <= n_group:
        raise ValueError(f"topk_group must be in 1..n_group={n_group}, got {topk_group}")
    if topk_group * (n_routed // n_group) < top_k:
        raise ValueError(f"topk_group={topk_group} groups of {n_routed // n_group} experts hold fewer than "
                         f"num_experts_per_tok={top_k} experts")
    for name, value in (("bias_update_speed", bias_update_speed), ("aux_loss_alpha", aux_loss_alpha),
                        ("seq_aux_loss_alpha", seq_aux_loss_alpha)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    one_of("dispatch", dispatch, DISPATCH_MODES)
