"""Figures and measurements of notebook 10 (nano-DeepSeek): the architecture, the recorded training runs,
self-speculative decoding per corpus domain and sampling. The model and its export live in nano / nano_export."""
from __future__ import annotations

import copy
import json
import time

import torch

from course_lib import asset_path
from course_lib.model import ByteTokenizer, generate
from course_lib.mtp import MTPModel, speculative_generate

RUN_NAMES = ("nano", "dense_iso_flop", "dense_iso_param", "mha", "no_mtp", "aux_loss",
             "nano_v4")            # the V4-style variant (course_lib.nano.v4): mHC + sliding/CSA/HCA, no MTP
PROMPTS = {"english": "The parser reads the command line and ", "python": "    def __init__(self, ",
           "arithmetic": "1234+4321=5555\n87*10=", "chinese": "床前明月光，"}


# --------------------------------------------------------------------------------------------- architecture figure
def plot_architecture(cfg):
    """One figure of nano-DeepSeek with the course's names: embedding, the dense and MoE decoder layers, the final
    norm and head, and the MTP module beside them (V3 Figures 2 and 3), annotated with cfg's sizes. Symbols are
    written as the report writes them (mathtext): the cached $c^{KV}_t$ and $k^R_t$, $d_c$, $h_i$, $t_{i+1}$."""
    import matplotlib.pyplot as plt

    from course_lib.kit.style import COLORS

    fig, ax = plt.subplots(figsize=(10, 6.2))
    ax.set(xlim=(0, 10), ylim=(0, 10)), ax.axis("off")

    def box(x, y, w, h, text, color, fs=8.5):
        ax.add_patch(plt.Rectangle((x, y), w, h, facecolor=color, alpha=0.25, edgecolor=color, lw=1.5))
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=fs)

    def arrow(x0, y0, x1, y1):
        ax.annotate("", (x1, y1), (x0, y0), arrowprops=dict(arrowstyle="->", color=COLORS["grey"], lw=1.2))

    k, L = cfg.first_k_dense_replace, cfg.num_hidden_layers
    box(0.5, 0.2, 4.6, 0.7, f"embed  (vocab {cfg.vocab_size} x d {cfg.hidden_size})", COLORS["grey"])
    box(0.5, 1.4, 4.6, 2.4, "", COLORS["blue"])
    dense = "layer 0" if k == 1 else f"layers 0..{k - 1}"
    ax.text(0.6, 3.5, f"{dense}: dense FFN (first_k_dense_replace = {k})", fontsize=8.5)
    box(0.8, 1.6, 4.0, 0.7, f"RMSNorm -> MLA  ($d_c$ {cfg.kv_lora_rank}, $d'_c$ {cfg.q_lora_rank}, "
                            f"{cfg.num_attention_heads} heads)", COLORS["blue"], 8)
    box(0.8, 2.5, 4.0, 0.7, f"RMSNorm -> SwiGLU  (width {cfg.intermediate_size})", COLORS["orange"], 8)
    box(0.5, 4.2, 4.6, 3.3, "", COLORS["purple"])
    ax.text(0.6, 7.2, f"layers {k}..{L - 1}: DeepSeekMoE FFN", fontsize=8.5)
    box(0.8, 4.35, 4.0, 0.7, r"RMSNorm -> MLA  (cache: $c^{KV}_t$ + $k^R_t$)", COLORS["blue"], 8)
    box(0.8, 5.25, 4.0, 1.75, f"RMSNorm -> router: sigmoid s + bias b (top-{cfg.num_experts_per_tok} of "
                            f"{cfg.n_routed_experts},\n{cfg.n_group} groups, best {cfg.topk_group})\n"
                            f"{cfg.n_shared_experts} shared + {cfg.num_experts_per_tok} routed experts "
                            f"(width {cfg.moe_intermediate_size})", COLORS["orange"], 8)
    box(0.5, 7.9, 4.6, 0.7, r"RMSNorm -> head  =>  P($t_{i+1}$)", COLORS["green"])
    for y0, y1 in ((0.9, 1.4), (3.8, 4.2), (7.5, 7.9)):
        arrow(2.8, y0, 2.8, y1)
    if cfg.num_nextn_predict_layers:
        box(5.8, 1.4, 3.9, 7.2, "", COLORS["red"])
        ax.text(5.9, 8.3, f"MTP module (stored as layer {L})", fontsize=8.5)
        box(6.0, 1.7, 3.5, 0.8, r"enorm(embed($t_{i+1}$))  hnorm($h_i$)", COLORS["grey"], 8)
        box(6.0, 3.0, 3.5, 0.7, "eh_proj: d x 2d  (V3 Eq. 21)", COLORS["red"], 8)
        box(6.0, 4.2, 3.5, 1.6, "one decoder layer\nMLA + DeepSeekMoE\n(Eq. 22)", COLORS["purple"], 8)
        box(6.0, 6.3, 3.5, 1.0, "shared_head: RMSNorm ->\nhead (shared)  =>  P($t_{i+2}$)", COLORS["green"], 8)
        for y0, y1 in ((2.5, 3.0), (3.7, 4.2), (5.8, 6.3)):
            arrow(7.75, y0, 7.75, y1)
        arrow(5.1, 7.6, 6.6, 2.5)
        ax.text(5.15, 7.0, "$h_i$", fontsize=8, color=COLORS["grey"])
    ax.set_title(f"nano-DeepSeek ({cfg.name}): V3's architecture with the course's modules", fontsize=10)
    return fig


# --------------------------------------------------------------------------------------------- recorded runs
# The dense baselines under the names notebook 10 teaches (section 2): the recordings call them by the width they
# match, "dense (activated)" and "dense (total)".
LABELS = {"dense_iso_flop": "dense, iso-FLOP", "dense_iso_param": "dense, iso-parameter"}


def load_runs(names=RUN_NAMES) -> dict:
    """The recorded runs of assets/nano/make_runs.py: name -> record (history, losses, sizes, time), with the
    labels of LABELS where a run has one."""
    runs = {n: json.loads(asset_path("nano", "runs", f"{n}.json").read_text()) for n in names}
    for n, r in runs.items():
        r["label"] = LABELS.get(n, r.get("label", n))
    return runs


# one line style and marker per run, with the course colours, so that curves stay apart where they overlap
LINE_STYLES = [("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"), ((0, (5, 1, 1, 1)), "v")]


def run_style(i: int) -> dict:
    """Plot keywords of the i-th run: colour, line style and marker (markers staggered so they do not sit on top of
    each other)."""
    from course_lib.kit.style import CYCLE

    ls, marker = LINE_STYLES[i % len(LINE_STYLES)]
    return dict(color=CYCLE[i % len(CYCLE)], linestyle=ls, marker=marker, markevery=(i, 5), markersize=5, lw=1.6)


def plot_runs(runs: dict, title: str = ""):
    """Validation loss against training steps (left) and against training FLOPs (right), one style per run
    (run_style) and the legend beside the panels."""
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    for i, (name, r) in enumerate(runs.items()):
        h = r["history"] if "history" in r else r
        a.plot(h["val_step"], h["val_loss"], label=r.get("label", name), **run_style(i))
        b.plot(h["val_flops"], h["val_loss"], label=r.get("label", name), **run_style(i))
    a.set(xlabel="training step", ylabel="validation loss (nats per byte)", title=title or "same tokens, same seed")
    b.set(xlabel="training FLOPs (6 x activated weights + attention)", xscale="log", title="against compute")
    fig.legend(*a.get_legend_handles_labels(), loc="center left", bbox_to_anchor=(0.905, 0.5), fontsize=8)
    return fig


def runs_table(runs: dict) -> str:
    """Text table: parameters, activated per token, FLOPs per token, final validation loss and perplexity, MaxVio."""
    import math

    lines = [f"{'run':<34}{'params':>9}{'act/token':>11}{'GFLOP/tok':>11}{'val loss':>10}{'ppl':>7}{'MaxVio':>8}"]
    for name, r in runs.items():
        h = r["history"]
        vio = "-" if r.get("maxvio") is None else f"{r['maxvio']:.2f}"
        lines.append(f"{r.get('label', name):<34}{r['params_main'] / 1e3:>8.0f}k{r['activated_per_token'] / 1e3:>10.0f}k"
                     f"{h['flops_per_token'] / 1e9:>11.5f}{h['val_loss'][-1]:>10.4f}"
                     f"{math.exp(h['val_loss'][-1]):>7.3f}{vio:>8}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- decoding
def domain_prompts(corpus, domain: str, n: int, length: int, seed: int = 0, device=None) -> list:
    """n validation windows of `length` tokens from one domain, each (1, length), on `device` (default the CPU)."""
    g = torch.Generator().manual_seed(seed)
    x, _ = corpus.get_batch("val", n, length, generator=g, domain=domain, device=device)
    return [row[None] for row in x]


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


@torch.no_grad()
def speculative_by_domain(mtp_model: MTPModel, corpus, n_prompts: int = 3, prompt_len: int = 32, new: int = 48,
                          repeat: int = 3, check_float64: bool = True, timed: bool = True) -> dict:
    """Per domain: acceptance of the MTP drafts and tokens per main forward pass over `n_prompts` validation prompts;
    whether the two decoders gave identical tokens in float64 on every prompt (the exactness claim, free of float32
    argmax ties); and, when `timed`, tokens/s of plain greedy and of self-speculative decoding on the first prompt
    (fastest of `repeat` interleaved runs each, so a burst of load on a shared machine hits both alike) with their
    ratio `speedup`. With timed=False nothing is timed and the result holds only the counts, which are the same on
    every machine (notebook 10 uses this; `python -m course_lib.bench nano_spec` times)."""
    if not isinstance(mtp_model, MTPModel):
        raise ValueError(f"mtp_model must be an MTPModel, got {type(mtp_model).__name__}")
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
        raise ValueError(f"repeat must be a positive int, got {repeat!r}")
    if not isinstance(timed, bool):
        raise ValueError(f"timed must be True or False, got {timed!r}")
    mtp_model.eval()
    m64 = copy.deepcopy(mtp_model).double() if check_float64 else None
    results = {}
    for d in corpus.domains:
        prompts = domain_prompts(corpus, d, n_prompts, prompt_len, device=next(mtp_model.parameters()).device)
        drafted = accepted = forwards = 0
        same = True
        for p in prompts:
            _, stats = speculative_generate(mtp_model, p, new)
            drafted, accepted, forwards = drafted + stats.drafted, accepted + stats.accepted, forwards + stats.forwards
            if m64 is not None:
                same &= torch.equal(speculative_generate(m64, p, new)[0], generate(m64.model, p, new, temperature=0))
        results[d] = dict(acceptance=accepted / drafted, tokens_per_forward=new * len(prompts) / forwards,
                          identical_float64=same if m64 is not None else None)
        if timed:
            t_plain, t_spec = [], []
            for _ in range(repeat):
                t_plain.append(_timed(lambda: generate(mtp_model.model, prompts[0], new, temperature=0))[1])
                t_spec.append(_timed(lambda: speculative_generate(mtp_model, prompts[0], new))[1])
            results[d].update(plain_tok_s=new / min(t_plain), spec_tok_s=new / min(t_spec),
                              speedup=min(t_plain) / min(t_spec))
    return results


def format_spec_table(results: dict) -> str:
    """Two tables: what the drafts achieved (the same on every run), then, for results of a timed run, the measured
    speeds (wall clock: they vary from run to run, so each of their rows says tok/s). Results of
    speculative_by_domain(..., timed=False) give the first table only."""
    lines = [f"{'domain':<12}{'acceptance':>11}{'tok/forward':>12}{'same as greedy (fp64)':>23}"]
    for d, r in results.items():
        lines.append(f"{d:<12}{r['acceptance']:>11.1%}{r['tokens_per_forward']:>12.2f}{str(r['identical_float64']):>23}")
    if not all("speedup" in r for r in results.values()):
        return "\n".join(lines)
    lines += ["", "measured on this machine:"]
    for d, r in results.items():
        lines.append(f"{d:<12} plain {r['plain_tok_s']:>5.0f} tok/s, speculative {r['spec_tok_s']:>5.0f} tok/s: "
                     f"speed-up {r['speedup']:.2f}x")
    return "\n".join(lines)


def most_predictable(results: dict) -> tuple[str, str]:
    """The domain with the highest acceptance and one line of what the drafts achieved there: acceptance, tokens per
    main forward pass and whether the output was identical to greedy in float64. All three are counts, the same on
    every machine; the measured speed-up is in format_spec_table (and judged by `python -m course_lib.bench
    nano_spec`)."""
    if not results:
        raise ValueError("results must hold at least one domain (from speculative_by_domain)")
    best = max(results, key=lambda d: results[d]["acceptance"])
    r = results[best]
    line = (f"most predictable domain: {best}, acceptance {r['acceptance']:.1%}, {r['tokens_per_forward']:.2f} tokens "
            f"per main forward pass, identical to greedy (fp64): {r['identical_float64']}")
    return best, line


def draft_weight_fraction(cfg) -> float:
    """Weights one token multiplies with in an MTP draft step, as a fraction of those of a plain step of the main model,
    counted from the config the way course_lib.configs counts activated parameters (norms left out):

        draft = eh_proj (d x 2d) + one MoE decoder layer (attention, shared + top-K routed experts, router) + head
        plain = L attention blocks + the dense FFNs + (L - k) MoE FFNs + head

    At 2 FLOPs per weight this is the draft's share of a step's matrix FLOPs (attention scores over the cache and the
    embedding lookup are left out). It does not depend on the machine, unlike the measured c_draft."""
    from course_lib import configs

    L, k = cfg.num_hidden_layers, cfg.first_k_dense_replace
    if not cfg.num_nextn_predict_layers:
        raise ValueError("cfg must have an MTP module (num_nextn_predict_layers >= 1)")
    if L <= k:
        raise ValueError("cfg must have MoE layers (num_hidden_layers > first_k_dense_replace): the MTP layer is one")
    act = configs.count_activated(cfg)
    moe_ffn = (act["routed_experts"] + act["shared_experts"] + act["router"]) / (L - k)
    draft = 2 * cfg.hidden_size ** 2 + act["attention"] / L + moe_ffn + act["head"]
    plain = act["attention"] + act["dense_mlp"] + act["routed_experts"] + act["shared_experts"] + act["router"] \
        + act["head"]
    return draft / plain


# --------------------------------------------------------------------------------------------- sampling
@torch.no_grad()
def sample_text(model: MTPModel, prompt: str, new: int = 120, temperature: float = 0.8, seed: int = 0) -> str:
    """The model's continuation of `prompt` (bytes), sampled at `temperature` (0 = greedy), seeded."""
    if not prompt:
        raise ValueError("prompt must not be empty")
    if not 0 <= temperature <= 2:
        raise ValueError(f"temperature must be in [0, 2], got {temperature}")
    tok = ByteTokenizer()
    lm = model.model if isinstance(model, MTPModel) else model
    device = next(lm.parameters()).device
    idx = torch.tensor([tok.encode(prompt)], device=device)
    g = torch.Generator(device=device).manual_seed(seed)
    out = generate(lm, idx, new, temperature=temperature, generator=g)
    return tok.decode(out[0, idx.shape[1]:].tolist())


def plot_sample(model: MTPModel, domain: str = "python", temperature: float = 0.8, prompt: str = "", seed: int = 0,
                new: int = 120):
    """Widget body: print a sample for the domain's prompt (or `prompt`), and plot the next-byte distribution after
    the prompt at this temperature (top 12 bytes)."""
    import matplotlib.pyplot as plt

    if domain not in PROMPTS:
        raise ValueError(f"domain must be one of {tuple(PROMPTS)}, got {domain!r}")
    text = prompt or PROMPTS[domain]
    print(repr(text), "->", repr(sample_text(model, text, new, temperature, seed)))
    lm = model.model if isinstance(model, MTPModel) else model
    with torch.no_grad():
        ids = torch.tensor([ByteTokenizer().encode(text)], device=next(lm.parameters()).device)
        logits = lm(ids).logits[0, -1].cpu()
    probs = torch.softmax(logits / max(temperature, 1e-6), -1)
    top = probs.topk(12)
    fig, ax = plt.subplots(figsize=(8, 2.6))
    labels = [repr(bytes([b]))[2:-1] for b in top.indices.tolist()]
    ax.bar(range(12), top.values.tolist())
    ax.set(xticks=range(12), xticklabels=labels, ylabel="probability", ylim=(0, 1),
           title=f"next byte after the prompt at temperature {temperature:g}")
    return fig


@torch.no_grad()
def step_costs(mtp_model: MTPModel, prompt: torch.Tensor, repeat: int = 20) -> dict:
    """Seconds of the three passes decoding is made of, after a cached `prompt` (1, P): a plain one-token step of the
    main model, a two-token verify pass, and one MTP draft step (fastest of `repeat` interleaved runs each), with
    c_verify and c_draft relative to the plain step: the inputs of the speed-up formula (1 + a) / (c_verify + c_draft)."""
    from course_lib.bench.core import compare

    if prompt.dim() != 2 or prompt.shape[0] != 1:
        raise ValueError(f"prompt must have shape (1, P), got {tuple(prompt.shape)}")
    mtp_model.eval()
    lm, drafter = mtp_model.model, mtp_model.mtp[0]
    P = prompt.shape[1]
    cache, mtp_cache = lm.new_cache(), {}
    out = lm(prompt, cache=cache, start_pos=0)
    drafter(out.hidden[:, :-1], prompt[:, 1:], start_pos=0, cache=mtp_cache)      # MTP positions 0 .. P-2
    one, two, h = prompt[:, -1:], prompt[:, -2:], out.hidden[:, -1:]
    # each call gets fresh per-layer dicts: forward rebinds the cached tensors, so the stored cache stays P long
    fns = {"plain": lambda: lm(one, cache=[dict(c) for c in cache], start_pos=P),
           "verify": lambda: lm(two, cache=[dict(c) for c in cache], start_pos=P),
           "draft": lambda: drafter(h, one, start_pos=P - 1, cache=dict(mtp_cache))}
    t = compare(fns, repeat=repeat, warmup=2)
    return {**t, "c_verify": t["verify"] / t["plain"], "c_draft": t["draft"] / t["plain"]}
