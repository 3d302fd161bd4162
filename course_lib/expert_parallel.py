"""Expert parallelism and data parallelism with torch.distributed, the way DeepSeek-V3 spreads its MoE layers.

    torchrun --nproc-per-node 4 -m course_lib.nano.train_ep --ep 4 ...      # course_lib/nano/train_ep.py uses all of this

* ``init_distributed``: one process group from torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR, ...), backend
  chosen automatically (NCCL where every rank on the machine has a CUDA GPU of its own, gloo on the CPU otherwise),
  a timeout after which a collective that waits on a dead or hung rank fails instead of hanging. Without torchrun
  it returns a one-process description and creates nothing.
* ``ExpertParallelMoE``: a ``course_lib.moe.MoE`` whose N_r routed experts are spread over the ranks, N_r / world
  per rank (V3 §3.2: training used 64-way expert parallelism spanning 8 nodes). The router and shared experts are
  replicated. Per forward: route locally; send each token *once* to every rank that holds at least one of its
  experts, together with its gate values for that rank's experts (dispatch, an ``all_to_all_single``); run the
  local experts; send one combined vector per (token, rank) back (combine, the inverse ``all_to_all_single``); add
  them up. Both exchanges use ``torch.distributed.nn.functional.all_to_all_single``, the autograd-aware form, so
  backward runs the same exchanges in reverse. Node-limited routing (V3 §2.1.2: each token to at most M nodes) is
  the MoE's group-limited routing with one group per node: ``n_group`` = nodes, ``topk_group`` = M.
* Data parallelism for everything else: ``torch.nn.parallel.DistributedDataParallel`` averages the gradients of
  the replicated weights; the experts are excluded from it (each rank owns its own) and their gradients, which
  already sum all ranks' tokens through the all-to-all's backward, are divided by the world size
  (``finish_gradients``), so every weight gets the gradient of the mean loss over the global batch.
* ``gather_state_dict`` / ``shard_state_dict``: checkpoints hold the full single-process model (experts gathered
  onto rank 0), so one process can load them and a run can resume on another world size.
* ``atomic_save``: write to a temporary file, then rename: a crash mid-save leaves the previous checkpoint intact.

Papers: DeepSeek-V3 (arXiv 2412.19437) §2.1.2 (node-limited routing), §3.2.2 (all-to-all dispatch and combine),
§3.2 (64-way EP over 8 nodes in training); GShard (arXiv 2006.16668) for all-to-all expert parallelism.
"""
from __future__ import annotations

import datetime
import json
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.nn.functional import all_to_all_single

from course_lib.experts import RoutedExperts
from course_lib.moe import MoE


# --------------------------------------------------------------------------------------------- process group
@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str = "none"
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world > 1


def choose_backend(local_world: int, cuda_devices: int | None = None) -> tuple[str, str]:
    """(backend, a one-line reason). NCCL with one GPU per rank where this machine has at least as many CUDA GPUs as
    ranks on it (``local_world``); gloo on the CPU otherwise: gloo runs everywhere, NCCL needs a GPU of its own for
    each rank (two ranks on one GPU fail in NCCL's communicator set-up). ``cuda_devices`` defaults to
    ``torch.cuda.device_count()``."""
    if local_world < 1:
        raise ValueError(f"local_world must be >= 1, got {local_world}")
    n = torch.cuda.device_count() if cuda_devices is None else cuda_devices
    if n >= local_world:
        return "nccl", f"backend nccl: one CUDA GPU for each of the {local_world} ranks on this machine"
    if n == 0:
        return "gloo", f"backend gloo on the CPU: no CUDA GPU, {local_world} ranks on this machine"
    return "gloo", (f"backend gloo on the CPU: {local_world} ranks on this machine but {n} CUDA GPU"
                    f"{'s' if n > 1 else ''} (NCCL needs one GPU per rank)")


def init_distributed(timeout_s: float = 60.0) -> DistInfo:
    """Join the process group torchrun describes in the environment; a one-process DistInfo without torchrun.
    The first rank on each machine prints which backend was chosen and why (``choose_backend``).

    timeout_s: how long a collective may wait for the other ranks before it raises (gloo and NCCL both honour it),
    so a rank that died or hangs ends the run instead of blocking it forever."""
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return DistInfo(device=torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    backend, reason = choose_backend(int(os.environ.get("LOCAL_WORLD_SIZE", world)))
    if local_rank == 0:
        print(reason, flush=True)
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return DistInfo(rank, world, local_rank, backend, device)


# PyTorch's gloo process group, when its last reference goes, joins its worker threads while holding the GIL; a
# worker still releasing a finished collective's tensors needs the GIL: a deadlock, seen in about 1 of 45 runs of
# notebook 11's command on a busy 2-core machine (py-spy: the main thread in ~ProcessGroupGloo -> thread::join, a
# worker in ~AsyncBarrierWork -> decref, waiting for the GIL). So whatever holds the group (DDP's reducer, the
# world's registry) stays referenced until the rank leaves through ``exit_rank``, which runs no destructor.
_KEEP_UNTIL_EXIT: list = []


def destroy_process_group_safely(holders=(), grace_s: float = 30.0) -> None:
    """``dist.destroy_process_group`` that cannot hang: ``holders`` (objects that reference the group, e.g. the DDP
    wrapper) and the group itself stay referenced until the process exits, and after ``grace_s`` seconds a timer that
    needs no GIL (``faulthandler``) prints every thread's stack and ends the process with exit code 1, so a hang
    becomes an error that names its place. Leave the process with ``exit_rank`` afterwards."""
    import faulthandler

    _KEEP_UNTIL_EXIT.extend(holders)
    if dist.is_initialized():
        _KEEP_UNTIL_EXIT.append(dist.group.WORLD)
    faulthandler.dump_traceback_later(grace_s, exit=True)
    try:
        dist.destroy_process_group()
    finally:
        faulthandler.cancel_dump_traceback_later()


def exit_rank(code: int = 0) -> None:
    """End a rank without the interpreter's teardown (see ``_KEEP_UNTIL_EXIT``): flush the output, then os._exit."""
    import sys
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


# --------------------------------------------------------------------------------------------- the layer
def exchange_counts(send_counts: torch.Tensor, group=None) -> torch.Tensor:
    """Every rank tells every other how many rows it will send: an all-to-all of one integer per rank pair."""
    _tick()
    recv = torch.empty_like(send_counts)
    dist.all_to_all_single(recv, send_counts, group=group)
    return recv


class ExpertParallelMoE(MoE):
    """A ``MoE`` whose routed experts live on ``world`` ranks, ``n_routed_experts // world`` each (rank r holds
    experts r*E_l ... (r+1)*E_l - 1). Built from a full MoE with the same weights on every rank (same seed), it
    keeps only its slice, so its forward and backward equal the full layer's (tests/test_expert_parallel.py).

    After each forward: ``last_send_tokens`` (world,) tokens this rank sent to each rank in the dispatch;
    ``last_send_bytes`` (world,) bytes of that dispatch (each token row carries d_model activations plus E_l gate
    values); ``last_comm_s`` seconds spent inside the two all-to-alls (forward only)."""

    def __init__(self, moe: MoE, rank: int, world: int, group=None):
        cfg = dict(d_model=moe.d_model, n_routed_experts=moe.n_routed_experts, n_shared_experts=moe.n_shared_experts,
                   num_experts_per_tok=moe.num_experts_per_tok, moe_intermediate_size=moe.moe_intermediate_size,
                   scoring_func=moe.scoring_func, n_group=moe.n_group, topk_group=moe.topk_group,
                   norm_topk_prob=moe.norm_topk_prob, routed_scaling_factor=moe.routed_scaling_factor,
                   bias_update_speed=moe.bias_update_speed, aux_loss_alpha=moe.aux_loss_alpha,
                   seq_aux_loss_alpha=moe.seq_aux_loss_alpha)
        super().__init__(**cfg)
        if world < 1 or moe.n_routed_experts % world:
            raise ValueError(f"world={world} must divide n_routed_experts={moe.n_routed_experts}")
        if not 0 <= rank < world:
            raise ValueError(f"rank must be in 0..{world - 1}, got {rank}")
        self.rank, self.world, self.group = rank, world, group
        self.n_local = moe.n_routed_experts // world
        lo, hi = rank * self.n_local, (rank + 1) * self.n_local
        self.experts = RoutedExperts(self.n_local, moe.d_model, moe.moe_intermediate_size)
        own = moe.state_dict()
        own["experts.gate_up"] = own["experts.gate_up"][lo:hi].clone()
        own["experts.down"] = own["experts.down"][lo:hi].clone()
        self.load_state_dict(own)
        self.to(moe.gate.weight.device, moe.gate.weight.dtype)
        for p in self.experts.parameters():
            p.expert_parallel = True            # marks weights DDP must leave alone (finish_gradients scales them)
        self.last_send_tokens = self.last_send_bytes = None
        self.last_comm_s = 0.0

    def _a2a(self, x: torch.Tensor, out_splits: list, in_splits: list, grad: bool) -> torch.Tensor:
        out = x.new_empty((sum(out_splits),) + tuple(x.shape[1:]))
        _tick()
        t0 = time.perf_counter()
        if grad:
            with warnings.catch_warnings():      # PyTorch 2.13 flags this autograd form as deprecated; it works
                warnings.simplefilter("ignore", FutureWarning)
                out = all_to_all_single(out, x.contiguous(), out_splits, in_splits, group=self.group)
        else:
            dist.all_to_all_single(out, x.contiguous(), out_splits, in_splits, group=self.group)
        self.last_comm_s += time.perf_counter() - t0
        return out

    def experts_sparse(self, x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """Dispatch -> local experts -> combine. Replaces MoE's single-process expert computation."""
        n_tok, d = x.shape
        W, El = self.world, self.n_local
        self.last_comm_s = 0.0
        # gates (N, E) with the chosen experts' weights and zeros elsewhere, viewed per destination rank
        gates = torch.zeros(n_tok, self.n_routed_experts, dtype=x.dtype, device=x.device)
        gates = gates.scatter(1, indices, weights).view(n_tok, W, El)
        chosen = torch.zeros(n_tok, self.n_routed_experts, dtype=torch.bool, device=x.device)
        chosen = chosen.scatter(1, indices, True).view(n_tok, W, El)
        # one row per (token, destination rank) that holds at least one of the token's experts, grouped by rank
        dest, tok = chosen.any(-1).T.nonzero(as_tuple=True)
        send_counts = torch.bincount(dest, minlength=W)
        recv_counts = exchange_counts(send_counts, self.group)
        s_split, r_split = send_counts.tolist(), recv_counts.tolist()
        payload = torch.cat([x.index_select(0, tok), gates[tok, dest]], dim=1)       # (rows, d + E_l)
        self.last_send_tokens = send_counts.detach().cpu()
        self.last_send_bytes = self.last_send_tokens * payload.shape[1] * payload.element_size()
        # dispatch (V3 §3.2.2): rows travel to the ranks of their experts
        got = self._a2a(payload, r_split, s_split, grad=True)
        got_mask = self._a2a(chosen[tok, dest].to(torch.uint8), r_split, s_split, grad=False).bool()
        xin, g = got[:, :d], got[:, d:]
        # local experts: out_row = sum_{local e chosen} g_e FFN_e(x_row)
        out = torch.zeros_like(xin)
        for e in range(El):
            rows = got_mask[:, e].nonzero(as_tuple=True)[0]
            if rows.numel():
                y = self.experts.expert(e, xin.index_select(0, rows)) * g[rows, e].unsqueeze(-1)
                out = out.index_add(0, rows, y)
        # combine: the inverse all-to-all brings each row home, then the rows of a token are summed
        back = self._a2a(out, s_split, r_split, grad=True)
        return torch.zeros_like(x).index_add(0, tok, back)


def expert_parallel(model: nn.Module, rank: int, world: int, group=None) -> int:
    """Replace every MoE layer of ``model`` with an ExpertParallelMoE holding this rank's slice; returns how many."""
    n = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, MoE) and not isinstance(child, ExpertParallelMoE):
                setattr(module, name, ExpertParallelMoE(child, rank, world, group))
                n += 1
    return n


def dispatch_rows(indices: torch.Tensor, n_experts: int, world: int) -> torch.Tensor:
    """The routing's formula for the dispatch: rows[q] = number of tokens with at least one chosen expert on rank q
    (experts q*E/world ... (q+1)*E/world - 1). Pure; the tests compare it with what the layer sent."""
    per = n_experts // world
    hit = torch.zeros(indices.shape[0], world, dtype=torch.bool, device=indices.device)
    hit[torch.arange(indices.shape[0], device=indices.device).unsqueeze(1), indices // per] = True
    return hit.sum(0)


# --------------------------------------------------------------------------------------------- data parallel
def expert_param_names(model: nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if getattr(p, "expert_parallel", False)]


def wrap_ddp(model: nn.Module, info: DistInfo) -> nn.Module:
    """DDP over every weight except the expert-parallel ones (DDP would average different experts together)."""
    if not info.distributed:
        return model
    nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
        model, expert_param_names(model))
    # buffers (the aux-loss-free biases) stay in step by construction (sync_expert_loads), not by broadcast
    try:
        return nn.parallel.DistributedDataParallel(model, forward_sync_buffers=False)
    except TypeError:                                      # PyTorch before the argument existed
        return nn.parallel.DistributedDataParallel(model, broadcast_buffers=False)


def finish_gradients(model: nn.Module, world: int) -> None:
    """After backward: each expert's gradient summed every rank's loss through the all-to-all; divide by the world
    size so it is the gradient of the mean loss, like the DDP-averaged weights."""
    if world == 1:
        return
    for p in model.parameters():
        if getattr(p, "expert_parallel", False) and p.grad is not None:
            p.grad.div_(world)


def global_grad_norm_clip(model: nn.Module, max_norm: float, world: int) -> float:
    """clip_grad_norm_ over the whole (sharded) model: replicated gradients count once, expert shards are summed
    over the ranks. Returns the norm before clipping."""
    rep, exp = [], []
    for p in model.parameters():
        if p.grad is not None:
            (exp if getattr(p, "expert_parallel", False) else rep).append(p.grad)
    zero = torch.zeros((), dtype=torch.float64, device=next(model.parameters()).device)
    sq_rep = sum((g.double().pow(2).sum() for g in rep), zero)
    sq_exp = sum((g.double().pow(2).sum() for g in exp), zero)
    if world > 1:
        dist.all_reduce(sq_exp)
    norm = float((sq_rep + sq_exp).sqrt())
    coef = max_norm / (norm + 1e-6)
    if coef < 1:
        for g in rep + exp:
            g.mul_(coef)
    return norm


def sync_expert_loads(model: nn.Module, world: int) -> None:
    """Sum the per-expert token counts of all ranks before V3's bias update, so every rank updates the same biases
    from the global batch's load (as one process would)."""
    if world == 1:
        return
    for m in model.modules():
        if isinstance(m, MoE) and m.bias_update_speed > 0:
            dist.all_reduce(m.load_since_update)


# --------------------------------------------------------------------------------------------- checkpoints
def _gather_rows(t: torch.Tensor, world: int) -> torch.Tensor:
    parts = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts, 0)


def gather_state_dict(model: nn.Module, world: int) -> dict:
    """The full single-process state dict (every expert), assembled on every rank. Collective: all ranks call it."""
    sd = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    if world == 1:
        return sd
    for name in expert_param_names(model):
        sd[name] = _gather_rows(model.get_parameter(name).detach(), world).cpu()
    return sd


def shard_state_dict(full: dict, model: nn.Module, rank: int, world: int) -> dict:
    """This rank's slice of a full state dict (the inverse of gather_state_dict)."""
    sd = dict(full)
    for name in expert_param_names(model):
        n = full[name].shape[0] // world
        sd[name] = full[name][rank * n:(rank + 1) * n].clone()
    return sd


def gather_optimizer_state(model: nn.Module, opt: torch.optim.Optimizer, world: int) -> dict:
    """Adam's per-weight state keyed by parameter name, experts gathered: a checkpoint any world size can read."""
    names = {id(p): n for n, p in model.named_parameters()}
    experts = set(expert_param_names(model))
    out = {}
    for group in opt.param_groups:
        for p in group["params"]:
            st = opt.state.get(p, {})
            name = names[id(p)]
            entry = {}
            for k, v in st.items():
                if torch.is_tensor(v) and v.dim() > 0 and name in experts and world > 1:
                    v = _gather_rows(v, world)
                entry[k] = v.detach().cpu().clone() if torch.is_tensor(v) else v
            out[name] = entry
    return out


def load_optimizer_state(model: nn.Module, opt: torch.optim.Optimizer, by_name: dict, rank: int,
                         world: int) -> None:
    """Load ``gather_optimizer_state``'s output into this rank's optimizer (slicing the experts' moments)."""
    names = {id(p): n for n, p in model.named_parameters()}
    experts = set(expert_param_names(model))
    state, index = {}, 0
    template = opt.state_dict()
    for group in opt.param_groups:
        for p in group["params"]:
            entry = dict(by_name.get(names[id(p)], {}))
            if names[id(p)] in experts:
                for k, v in entry.items():
                    if torch.is_tensor(v) and v.dim() > 0:
                        n = v.shape[0] // world
                        entry[k] = v[rank * n:(rank + 1) * n].clone()
            if entry:
                state[index] = entry
            index += 1
    opt.load_state_dict({"state": state, "param_groups": template["param_groups"]})


def atomic_save(obj, path) -> None:
    """torch.save to a temporary file in the same folder, then os.replace: readers see the old file or the new
    one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# --------------------------------------------------------------------------------------------- liveness
class Heartbeat:
    """Each rank's pulse, written every ``interval`` seconds by a background thread to ``folder/rank{r}.json``:
    the time (stops when the process dies), the step and how many collectives the main thread has entered (stops
    when it hangs). ``diagnose`` compares them to name the rank that stopped answering.

    Two threads write the file (the training loop at the start of each step, the background thread in between), so
    every write holds a lock and goes through a temporary file of its own before the atomic rename. ``stop`` ends the
    background thread and waits for it (at most a few intervals)."""

    def __init__(self, folder, rank: int, interval: float = 0.5):
        import threading
        self.folder, self.rank, self.interval = Path(folder), rank, interval
        self.step, self.collectives = 0, 0
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-rank{rank}", daemon=True)
        self.write()
        self._thread.start()

    def write(self) -> None:
        import threading
        with self._lock:
            tmp = self.folder / f".rank{self.rank}.{os.getpid()}.{threading.get_ident()}.tmp"
            tmp.write_text(json.dumps({"rank": self.rank, "time": time.time(), "step": self.step,
                                       "collectives": self.collectives}))
            os.replace(tmp, self.folder / f"rank{self.rank}.json")

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.write()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)


_HEARTBEAT: Heartbeat | None = None


def start_heartbeat(folder, rank: int, interval: float = 0.5) -> Heartbeat:
    global _HEARTBEAT
    _HEARTBEAT = Heartbeat(folder, rank, interval)
    return _HEARTBEAT


def _tick() -> None:
    """Count a collective entered by this rank (the expert-parallel exchanges call it)."""
    if _HEARTBEAT is not None:
        _HEARTBEAT.collectives += 1


def diagnose(folder, world: int, rank: int, stale_s: float = 3.0) -> str:
    """The message a rank prints when a collective failed or timed out: which ranks died (no pulse for
    ``stale_s`` seconds) and which are alive but stuck (entered fewer collectives than this rank)."""
    now, mine, found = time.time(), None, []
    beats = {}
    for r in range(world):
        f = Path(folder) / f"rank{r}.json"
        beats[r] = json.loads(f.read_text()) if f.exists() else None
    mine = beats[rank] or {"collectives": 0, "step": 0}
    for r, b in beats.items():
        if r == rank:
            continue
        if b is None:
            found.append(f"rank {r} never started")
        elif now - b["time"] > stale_s:
            found.append(f"rank {r} died (no heartbeat for {now - b['time']:.0f} s, last in step {b['step']})")
        elif b["collectives"] < mine["collectives"]:
            found.append(f"rank {r} is alive but hangs in step {b['step']} (entered {b['collectives']} "
                         f"collectives, rank {rank} {mine['collectives']})")
    who = "; ".join(found) if found else "no other rank looks stopped (a network or backend error?)"
    return f"rank {rank}: a collective failed or timed out in step {mine['step']}: {who}"


# --------------------------------------------------------------------------------------------- figure
def plot_dispatch(indices: torch.Tensor, n_experts: int, world: int, token_rank=None, ax=None):
    """Tokens (left, on the rank that holds them) and experts (right, grouped by rank); one arrow per dispatched
    row, i.e. per (token, destination rank) pair, ending at the rank's box: the all-to-all's traffic, drawn."""
    import matplotlib.pyplot as plt
    n_tok, per = indices.shape[0], n_experts // world
    token_rank = [0] * n_tok if token_rank is None else list(token_rank)
    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 0.5 * max(n_tok, n_experts) + 0.8))
    colours = plt.get_cmap("tab10")
    ey = lambda e: n_experts - 1 - e - 0.5 * (e // per)                      # experts, a gap between ranks
    ty = lambda t: (n_experts + 0.5 * (world - 1)) * (1 - (t + 0.5) / n_tok) - 0.5
    for q in range(world):
        top, bottom = ey(q * per) + 0.4, ey((q + 1) * per - 1) - 0.4
        ax.add_patch(plt.Rectangle((2.6, bottom), 1.2, top - bottom, fill=False, ec=colours(q), lw=1.5))
        ax.text(3.9, (top + bottom) / 2, f"rank {q}", va="center", color=colours(q))
    for e in range(n_experts):
        ax.text(3.2, ey(e), f"expert {e}", ha="center", va="center", fontsize=8)
    for t in range(n_tok):
        ax.text(0, ty(t), f"token {t} (rank {token_rank[t]})", ha="right", va="center", fontsize=8,
                color=colours(token_rank[t]))
        for q in sorted({int(e) // per for e in indices[t]}):
            mid = (ey(q * per) + ey((q + 1) * per - 1)) / 2
            ax.annotate("", xy=(2.55, mid), xytext=(0.1, ty(t)),
                        arrowprops=dict(arrowstyle="->", color=colours(q), alpha=0.7))
            chosen = ",".join(str(int(e)) for e in indices[t] if int(e) // per == q)
            ax.text(1.3, (ty(t) + mid) / 2 + 0.15, f"experts {chosen}", fontsize=7, color=colours(q), ha="center")
    ax.set_xlim(-2.2, 4.8)
    ax.set_ylim(-1 - 0.5 * (world - 1), n_experts)
    ax.axis("off")
    ax.set_title("dispatch: one row per token and destination rank", fontsize=9)
    return ax
