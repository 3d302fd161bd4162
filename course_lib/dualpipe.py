"""Pipeline-parallel schedules laid out on a timeline: 1F1B, ZB1P and DualPipe (DeepSeek-V3 §3.2.1).

A pipeline splits a model's layers into PP *stages*, one per rank, and a batch into micro-batches. Each micro-batch
needs, on every stage, a forward chunk F, a backward chunk for the input gradient and a backward chunk for the weight
gradient W (together the full backward B; the input part alone takes B - W). A *schedule* fixes the order in which
each rank runs its chunks; the data dependencies (stage s needs stage s-1's forward output and stage s+1's input
gradient) then fix when each chunk can start. ``simulate`` computes every start and end time, and from them the
bubble (time a rank sits idle) and the activation and parameter memory.

Schedules (orders written out in ``one_f_one_b``, ``zb1p`` and ``dualpipe``):
  1F1B      Narayanan et al. 2021 (PipeDream-Flush, arXiv 2104.04473): warm-up forwards, then one forward and one
            full backward alternately.
  ZB1P      Qi et al. 2023 (Zero Bubble Pipeline Parallelism, arXiv 2401.10241, "ZB-H1"): 1F1B with the backward split
            into input gradient and weight gradient, weight gradients postponed to fill the tail bubble.
  DualPipe  DeepSeek-V3 §3.2.1 (arXiv 2412.19437) and deepseek-ai/DualPipe: micro-batches enter from both ends
            (rank r holds stage r of the forward direction and stage PP-1-r of the reverse one), a forward chunk of
            one direction runs overlapped with a backward chunk of the other (time ``FB``), and weight gradients are
            postponed where that shortens the pipeline. The rank-by-rank order follows the eight steps of the
            released ``dualpipe.py``.

V3 Table 2 (also in the DualPipe README), bubble per rank with F, B (full backward), W and F&B (``FB``):
  1F1B (PP-1)(F+B);  ZB1P (PP-1)(F+B-2W);  DualPipe (PP/2-1)(F&B+B-3W).  Parameters 1x / 1x / 2x, activations PP /
  PP / PP+1 (in micro-batches of one stage).  ``table2_bubble`` writes these out; tests compare them with
  ``simulate``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from course_lib.kit.validate import int_at_least, one_of, positive_int

SCHEDULES = ("1F1B", "ZB1P", "DualPipe")


@dataclass(frozen=True)
class Op:
    """One chunk of work on one rank. kind: "F" forward, "B" full backward, "b" input-gradient backward (its weight
    gradient is queued), "W" a queued weight gradient, "FB" a forward (of ``direction``, ``mb``) overlapped with a
    full backward (of ``direction2``, ``mb2``). direction 0 flows rank 0 -> PP-1, direction 1 the other way."""
    kind: str
    direction: int
    mb: int
    direction2: int = -1
    mb2: int = -1

    @property
    def label(self) -> str:
        if self.kind == "FB":
            return f"F{self.mb}+B{self.mb2}"
        return f"{self.kind}{self.mb}"


@dataclass
class Timeline:
    """The result of ``simulate``: per rank a list of (start, end, Op), and the derived measures."""
    schedule: str
    pp: int
    micro_batches: int
    times: dict
    rows: list = field(default_factory=list)            # rows[r] = [(start, end, Op), ...] in execution order
    makespan: float = 0.0
    busy: list = field(default_factory=list)            # compute time of each rank
    bubble: list = field(default_factory=list)          # makespan - busy, per rank
    activations: list = field(default_factory=list)     # peak micro-batch activations held, per rank
    parameters: list = field(default_factory=list)      # stages of weights held, per rank

    @property
    def max_bubble(self) -> float:
        return max(self.bubble)


def _check(pp: int, micro_batches: int, times: dict) -> None:
    int_at_least("pp", pp, 2)
    positive_int("micro_batches", micro_batches)
    for k in ("F", "B", "W", "FB", "comm"):
        if times[k] < 0:
            raise ValueError(f"times[{k!r}] must be >= 0, got {times[k]}")
    if times["W"] > times["B"]:
        raise ValueError(f"times['W'] (weight part) must be at most times['B'] (full backward), got {times['W']}")


def chunk_times(F: float = 1.0, B: float = 2.0, W: float = 1.0, FB: float | None = None, comm: float = 0.0) -> dict:
    """Chunk durations. B is the FULL backward (input + weight gradient), as in V3 Table 2; W its weight part.
    FB, two overlapped chunks, defaults to F + B (no gain from overlapping); comm is added on every rank-to-rank
    hand-over (0: communication fully hidden, Table 2's assumption)."""
    return {"F": F, "B": B, "W": W, "FB": F + B if FB is None else FB, "comm": comm}


# ------------------------------------------------------------------------------------- the orders
def one_f_one_b(pp: int, micro_batches: int) -> list[list[str]]:
    """1F1B: rank r runs min(PP-1-r, M) warm-up forwards, then alternates one forward and one full backward,
    then drains the remaining backwards."""
    orders = []
    for r in range(pp):
        warm = min(pp - 1 - r, micro_batches)
        seq = ["F"] * warm
        for _ in range(micro_batches - warm):
            seq += ["F", "B"]
        seq += ["B"] * warm
        orders.append(seq)
    return orders


def zb1p(pp: int, micro_batches: int) -> list[list[str]]:
    """ZB-H1: 1F1B's order with each backward split into b (input gradient, on the critical path) and W (weight
    gradient, off it). Rank r keeps r weight gradients queued (the last ranks the most) and runs them at the end,
    so the input gradients travel back to rank 0 sooner and the queued W's fill what 1F1B leaves idle; peak
    activations stay at 1F1B's PP (Qi et al. 2023, §3.1 and Figure 3)."""
    orders = []
    for r in range(pp):
        warm = min(pp - 1 - r, micro_batches)
        seq, pending, hold = ["F"] * warm, 0, r

        def backward(seq, pending):
            seq.append("b")
            if pending + 1 > hold:
                seq.append("W")
                return pending
            return pending + 1

        for _ in range(micro_batches - warm):
            seq.append("F")
            pending = backward(seq, pending)
        for _ in range(warm):
            pending = backward(seq, pending)
        seq += ["W"] * pending
        orders.append(seq)
    return orders


def dualpipe(pp: int, micro_batches: int) -> list[list[tuple]]:
    """DualPipe's order per rank, following the eight steps of deepseek-ai/DualPipe ``dualpipe.py``.

    Entries are ("F", phase), ("B", phase), ("b", phase) (input gradient only, weight gradient queued), ("W",) and
    ("FB", phase_f, phase_b). A rank's phase 0 is the direction that reaches it first: the forward direction on the
    first half of the ranks, the reverse direction on the second half. Needs PP even and M >= 2 PP, M even
    (half the micro-batches go each way)."""
    if pp % 2:
        raise ValueError(f"pp must be even for DualPipe, got {pp}")
    if micro_batches % 2 or micro_batches < 2 * pp:
        raise ValueError(f"micro_batches must be even and >= 2*pp={2 * pp} for DualPipe, got {micro_batches}")
    half_ranks, half_chunks = pp // 2, micro_batches // 2
    orders = []
    for rank in range(pp):
        h = min(rank, pp - 1 - rank)
        middle = rank in (half_ranks - 1, half_ranks)
        seq = [("F", 0)] * ((half_ranks - h - 1) * 2)                           # step 1: nF0
        for _ in range(h + 1):                                                  # step 2: nF0F1
            seq += [("F", 0), ("F", 1)]
        for _ in range(half_ranks - h - 1):                                     # step 3: nB1W1F1 (zero bubble)
            seq += [("b", 1), ("W",), ("F", 1)]
        for i in range(half_chunks - pp + h + 1):                               # step 4: nF0B1F1B0
            if i == 0 and middle:
                seq += [("F", 0), ("B", 1)]                                     # not overlapped (released code)
            else:
                seq.append(("FB", 0, 1))
            seq.append(("FB", 1, 0))
        for _ in range(half_ranks - h - 1):                                     # step 5: nB1F1B0
            seq += [("B", 1), ("FB", 1, 0)]
        zb = False                                                              # step 6: nB1B0
        for i in range(h + 1):
            if i == (h + 1) // 2 and h % 2 == 1:
                zb = True
            seq.append(("b" if zb else "B", 1))
            if i == (h + 1) // 2 and h % 2 == 0:
                zb = True
            seq.append(("b" if zb else "B", 0))
        for _ in range(half_ranks - h - 1):                                     # step 7: nWB0 (zero bubble)
            seq += [("W",), ("b", 0)]
        seq += [("W",)] * (h + 1)                                               # step 8: nW
        orders.append(seq)
    return orders


def build_ops(schedule: str, pp: int, micro_batches: int) -> list[list[Op]]:
    """The schedule's per-rank orders with micro-batch numbers filled in (each rank runs each direction's forwards,
    and its backwards, in micro-batch order; queued weight gradients come out first in, first out)."""
    one_of("schedule", schedule, SCHEDULES)
    if schedule == "DualPipe":
        raw = dualpipe(pp, micro_batches)
    else:
        raw = [[(k, 0) if k != "W" else ("W",) for k in seq]
               for seq in (one_f_one_b if schedule == "1F1B" else zb1p)(pp, micro_batches)]
    rows = []
    for rank, seq in enumerate(raw):
        second_half = schedule == "DualPipe" and rank >= pp // 2
        nxt_f, nxt_b, queue, ops = [0, 0], [0, 0], [], []

        def direction(phase):
            return phase ^ int(second_half)

        for entry in seq:
            kind = entry[0]
            if kind == "F":
                d = direction(entry[1])
                ops.append(Op("F", d, nxt_f[d]))
                nxt_f[d] += 1
            elif kind in ("B", "b"):
                d = direction(entry[1])
                ops.append(Op(kind, d, nxt_b[d]))
                if kind == "b":
                    queue.append((d, nxt_b[d]))
                nxt_b[d] += 1
            elif kind == "W":
                d, mb = queue.pop(0)
                ops.append(Op("W", d, mb))
            else:                                                               # FB
                df, db = direction(entry[1]), direction(entry[2])
                ops.append(Op("FB", df, nxt_f[df], db, nxt_b[db]))
                nxt_f[df] += 1
                nxt_b[db] += 1
        rows.append(ops)
    return rows


# ------------------------------------------------------------------------------------- simulation
def _stage(rank: int, direction: int, pp: int) -> int:
    return rank if direction == 0 else pp - 1 - rank


def _rank(stage: int, direction: int, pp: int) -> int:
    return stage if direction == 0 else pp - 1 - stage


def _needs(op_part: tuple, rank: int, pp: int) -> list[tuple]:
    """Events ('F' | 'B', direction, mb, rank) a forward or backward part waits for, each with whether the
    hand-over crosses ranks (then it pays the communication time)."""
    kind, d, mb = op_part
    s = _stage(rank, d, pp)
    if kind == "F":
        return [(("F", d, mb, _rank(s - 1, d, pp)), True)] if s > 0 else []
    if s < pp - 1:                                         # backward: the input gradient of the next stage
        return [(("B", d, mb, _rank(s + 1, d, pp)), True)]
    return [(("F", d, mb, rank), False)]                   # last stage: its own forward (the loss)


def simulate(schedule: str, pp: int, micro_batches: int, times: dict | None = None) -> Timeline:
    """Lay out every rank's chunks in time: each chunk starts when its rank is free and its inputs have arrived.

    Activation memory counts, per rank, micro-batch chunks whose forward has run and whose backward has not yet
    released them (the full backward, or the weight gradient where it was split off). Parameters count the
    stages a rank holds (two for DualPipe)."""
    times = chunk_times() if times is None else {**chunk_times(), **times}
    _check(pp, micro_batches, times)
    rows = build_ops(schedule, pp, micro_batches)
    dur = {"F": times["F"], "B": times["B"], "b": times["B"] - times["W"], "W": times["W"], "FB": times["FB"]}
    done: dict = {}                                        # event -> end time
    out = [[] for _ in range(pp)]
    pos, free = [0] * pp, [0.0] * pp
    while any(pos[r] < len(rows[r]) for r in range(pp)):
        progressed = False
        for r in range(pp):
            while pos[r] < len(rows[r]):
                op = rows[r][pos[r]]
                parts = _parts(op)
                needs = [n for p in parts if p[0] != "W" for n in _needs(p, r, pp)]
                # inside one overlapped FB chunk the forward does not wait for the backward part, and vice versa
                if any(ev not in done for ev, _ in needs):
                    break
                start = max([free[r]] + [done[ev] + (times["comm"] if cross else 0.0) for ev, cross in needs])
                end = start + dur[op.kind]
                for kind, d, mb in parts:
                    if kind in ("F", "B", "b"):
                        done[("F" if kind == "F" else "B", d, mb, r)] = end
                out[r].append((start, end, op))
                free[r], pos[r], progressed = end, pos[r] + 1, True
        if not progressed:
            raise RuntimeError(f"{schedule}: the order deadlocks for pp={pp}, micro_batches={micro_batches}")
    makespan = max(free)
    busy = [sum(e - s for s, e, _ in row) for row in out]
    tl = Timeline(schedule, pp, micro_batches, times, out, makespan, busy, [makespan - b for b in busy])
    tl.activations = [_peak_activations(row) for row in out]
    tl.parameters = [2 if schedule == "DualPipe" else 1] * pp
    return tl


def _parts(op: Op) -> list[tuple]:
    if op.kind == "FB":
        return [("F", op.direction, op.mb), ("B", op.direction2, op.mb2)]
    return [(op.kind, op.direction, op.mb)]


def _peak_activations(row) -> int:
    """Peak number of (direction, micro-batch) chunks held: +1 when a forward starts, -1 when the chunk's last
    backward piece (B, or W after b) ends. A chunk's backward that releases at the same instant another forward
    starts is released first."""
    events = []
    for start, end, op in row:
        for kind, _, _ in _parts(op):
            if kind == "F":
                events.append((start, 1))
            elif kind in ("B", "W"):
                events.append((end, -1))
    held = peak = 0
    for _, delta in sorted(events, key=lambda e: (e[0], e[1])):
        held += delta
        peak = max(peak, held)
    return peak


def table2_bubble(schedule: str, pp: int, times: dict | None = None) -> float:
    """DeepSeek-V3 Table 2's bubble formulas, written out (F, B full backward, W weight part, FB = F&B)."""
    t = chunk_times() if times is None else {**chunk_times(), **times}
    F, B, W, FB = t["F"], t["B"], t["W"], t["FB"]
    if schedule == "1F1B":
        return (pp - 1) * (F + B)                          # (PP-1)(F+B)
    if schedule == "ZB1P":
        return (pp - 1) * (F + B - 2 * W)                  # (PP-1)(F+B-2W)
    if schedule == "DualPipe":
        return (pp / 2 - 1) * (FB + B - 3 * W)             # (PP/2-1)(F&B+B-3W)
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")


def table2_memory(schedule: str, pp: int) -> tuple[int, int]:
    """(parameter copies, activation micro-batches) per rank from V3 Table 2: 1x/PP, 1x/PP, 2x/PP+1."""
    one_of("schedule", schedule, SCHEDULES)
    return (2, pp + 1) if schedule == "DualPipe" else (1, pp)


# ------------------------------------------------------------------------------------- figures
_COLOURS = {"F": "#4C72B0", "B": "#C44E52", "b": "#DD8452", "W": "#55A868", "FB": "#8172B2"}


def plot_timeline(tl: Timeline, ax=None):
    """Gantt chart: one row per rank, one box per chunk (forward blue, full backward red, input-gradient backward
    orange, weight gradient green, overlapped forward+backward purple; the reverse direction hatched)."""
    import matplotlib.pyplot as plt
    if ax is None:
        _, ax = plt.subplots(figsize=(10, 0.45 * tl.pp + 1))
    for r, row in enumerate(tl.rows):
        for start, end, op in row:
            ax.barh(r, end - start, left=start, height=0.8, color=_COLOURS[op.kind], edgecolor="white",
                    hatch="//" if op.direction == 1 and op.kind != "FB" else None, linewidth=0.5)
            if tl.pp * tl.micro_batches <= 160:
                ax.text((start + end) / 2, r, op.label, ha="center", va="center", fontsize=6, color="white")
    ax.set_yticks(range(tl.pp), [f"rank {r}" for r in range(tl.pp)])
    ax.invert_yaxis()
    ax.set_xlim(0, tl.makespan)
    ax.set_xlabel("time (units of the chunk times)")
    ax.set_title(f"{tl.schedule}: makespan {tl.makespan:.1f}, bubble {tl.max_bubble:.1f}, "
                 f"activations {max(tl.activations)}, parameters {tl.parameters[0]}x", fontsize=9)
    return ax


def plot_schedules(pp: int = 4, micro_batches: int = 8, F: float = 1.0, B: float = 2.0, W: float = 1.0,
                   FB: float = 2.5, comm: float = 0.0):
    """The three schedules on the same time axis (the notebook's widget calls this)."""
    import matplotlib.pyplot as plt
    times = chunk_times(F, B, W, FB, comm)
    tls = [simulate(s, pp, micro_batches, times) for s in SCHEDULES]
    fig, axes = plt.subplots(3, 1, figsize=(11, 1.2 + 1.1 * pp), sharex=True)
    for ax, tl in zip(axes, tls):
        plot_timeline(tl, ax)
    axes[-1].set_xlim(0, max(t.makespan for t in tls))
    fig.tight_layout()
    return fig
