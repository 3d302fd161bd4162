"""nano-V4.1: the capstone rebuilt with DeepSeek-V4.1's block (notebook 13, section 6).

DeepSeek-V4.1-Flash's released code, as ported in NVIDIA-NeMo/Automodel
nemo_automodel/components/models/deepseek_v41/ (model.py DeepseekV41Model / DeepseekV41Block, attention.py
DeepseekV41Attention / _Compressor / _Indexer / _select_candidate_blocks, engram.py, config.py), at the capstone's
scale:

  * CSA2 attention (course_lib.csa2): every layer attends to its own sliding window of shared-KV vectors; a
    compressed layer also attends to the top-k of a compressed cache. Full layers own the compressor (r-to-1 softmax
    pooling) and the index keys; Reindex layers re-score the last Full layer's cache with their own index queries;
    Reuse layers take its compressed KV and the last top-k unchanged. The candidate source keeps the best blocks of
    compressed positions and later index layers score only inside them. The cache travels from layer to layer as a
    state (DeepseekV41AttentionState in attention.py).
  * single-pass mHC (course_lib.nano.v41.single_pass_block): each sub-layer reads the streams through the A of the
    previous site; the first block reads stream 0; the head collapses the streams with the last FFN-site A
    (model.py DeepseekV41Model.forward).
  * Engram (course_lib.engram.Engram with hc_mult streams and no short convolution) writes into the streams before
    the attention site of its layers.
  * the encoder/decoder split (course_lib.nano.v41.encoder_decoder): the decoder starts at the first ratio-1 layer,
    a KV source. Training runs every layer, as the port does; the split changes only which weights a prompt token
    needs (``active_params``).

Kept from nano-V4 so the comparison isolates V4.1's changes: nano-DeepSeek's FFNs (dense first layer, then
DeepSeekMoE with the aux-loss-free bias), its init and its training recipe (course_lib.nano.train). One change of
ours: the released indexer is frozen in the port (it fine-tunes DeepSeek's trained weights); a toy trained from
scratch must learn it, so each index layer learns from V3.2's KL loss towards its main attention, as nano-V4's CSA
does (V4Attention._indexer_loss). Storage formats (FP8/NVFP4/MXFP4) and YaRN are left out.

Equal FLOPs (``train_flops_per_token``, the one definition notebook 13 and assets/v41/make_runs.py use): training
FLOPs per token = 6 x activated weights (forward 2, backward 4; Kaplan et al. 2020, arXiv 2001.08361 §2.1) + 6 x
(query-key pairs each token forms, averaged over a training window) x heads x (d_qk + d_v) + 6 x (index scores)
x index heads x index head dim. Activated weights skip lookup tables (the token embedding, Engram's n-gram tables:
a gather is free), count routed experts at K_r / N_r, and count the head once.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from course_lib.csa2 import CSA2Layout, candidate_blocks, select_topk
from course_lib.dsa import indexer_kl_loss
from course_lib.engram import Engram
from course_lib.kit.validate import non_negative_int, positive_int
from course_lib.layers import RMSNorm, SwiGLU
from course_lib.mhc import HyperConnection
from course_lib.model import ModelOutput, TinyLM
from course_lib.moe import MoE
from course_lib.nano import TINY, NanoConfig, moe_kwargs
from course_lib.nano import build_model as build_nano
from course_lib.nano.v4 import TINY_V4, NanoV4Config
from course_lib.nano.v4 import build_model as build_v4
from course_lib.nano.v41 import encoder_decoder, one_hot_mix, single_pass_block
from course_lib.v4_attention import partial_rope


@dataclass(frozen=True)
class NanoV41Config:
    """A DeepSeek-V4.1-shaped toy. Field names follow NeMo's DeepseekV41TextConfig (config.py) where it has them."""
    name: str = "nano-V4.1 (CSA2 + Engram + single-pass mHC)"
    vocab_size: int = 256
    hidden_size: int = 96
    intermediate_size: int = 144
    moe_intermediate_size: int = 48
    num_hidden_layers: int = 4
    first_k_dense_replace: int = 1
    num_attention_heads: int = 4
    head_dim: int = 32
    qk_rope_head_dim: int = 8
    q_lora_rank: int = 48
    o_groups: int = 2
    o_lora_rank: int = 32
    sliding_window: int = 16
    # V4.1-Flash: window-only, ratio 2, then ratio 1; here ratio 2 in the encoder, ratio 1 in the decoder
    compress_ratios: tuple = (2, 2, 1, 1)
    kv_source_layer_ids: tuple = (0, 2)            # Full
    index_source_layer_ids: tuple = (0, 2, 3)      # Full + Reindex (layer 1 is Reuse)
    candidate_source_layer_id: int = 2
    candidate_topk_blocks: int = 4
    candidate_block_size: int = 4
    index_n_heads: int = 2
    index_head_dim: int = 16
    index_topk: int = 8
    hc_mult: int = 4
    hc_sinkhorn_iters: int = 20
    engram_layer_ids: tuple = (1,)
    engram_max_ngram: int = 3
    engram_heads: int = 2
    engram_head_dim: int = 8
    engram_table_size: int = 1031                  # rows per head (a prime >= vocab_size)
    n_routed_experts: int = 8
    n_shared_experts: int = 1
    num_experts_per_tok: int = 2
    n_group: int = 4
    topk_group: int = 2
    routed_scaling_factor: float = 1.0
    norm_topk_prob: bool = True
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    # ---- course-only (training), as nano.NanoConfig
    bias_update_speed: float = 0.001
    seq_aux_loss_alpha: float = 0.0001
    aux_loss_alpha: float = 0.0

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "intermediate_size", "moe_intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "head_dim", "qk_rope_head_dim", "q_lora_rank", "o_groups",
                     "o_lora_rank", "sliding_window", "candidate_topk_blocks", "candidate_block_size",
                     "index_n_heads", "index_head_dim", "index_topk", "hc_mult", "hc_sinkhorn_iters",
                     "engram_max_ngram", "engram_heads", "engram_head_dim", "engram_table_size",
                     "n_routed_experts", "num_experts_per_tok", "n_group", "topk_group"):
            positive_int(name, getattr(self, name))
        for name in ("first_k_dense_replace", "n_shared_experts"):
            non_negative_int(name, getattr(self, name))
        if self.first_k_dense_replace > self.num_hidden_layers:
            raise ValueError(f"first_k_dense_replace must be at most num_hidden_layers={self.num_hidden_layers}, "
                             f"got {self.first_k_dense_replace}")
        for name in ("compress_ratios", "kv_source_layer_ids", "index_source_layer_ids", "engram_layer_ids"):
            v = getattr(self, name)
            if not isinstance(v, (list, tuple)):
                raise ValueError(f"{name} must be a list or tuple of ints, got {v!r}")
            object.__setattr__(self, name, tuple(v))      # a list from JSON becomes a tuple (hashable, frozen)
        if len(self.compress_ratios) != self.num_hidden_layers:
            raise ValueError(f"compress_ratios must give one ratio per layer ({self.num_hidden_layers}), "
                             f"got {self.compress_ratios!r}")
        try:
            encoder_decoder(self.layout())
        except ValueError as e:
            raise ValueError(f"compress_ratios / kv_source_layer_ids / index_source_layer_ids / "
                             f"candidate_source_layer_id: {e}") from None
        if any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self.num_hidden_layers
               for i in self.engram_layer_ids):
            raise ValueError(f"engram_layer_ids must be layer ids in [0, {self.num_hidden_layers}), "
                             f"got {self.engram_layer_ids!r}")
        if self.engram_table_size < self.vocab_size:
            raise ValueError(f"engram_table_size must be >= vocab_size={self.vocab_size}, "
                             f"got {self.engram_table_size}")
        if self.engram_max_ngram < 2:
            raise ValueError(f"engram_max_ngram must be >= 2, got {self.engram_max_ngram}")
        if self.qk_rope_head_dim % 2 or self.qk_rope_head_dim > self.head_dim:
            raise ValueError(f"qk_rope_head_dim must be even and at most head_dim={self.head_dim}, "
                             f"got {self.qk_rope_head_dim}")
        if self.num_attention_heads % self.o_groups:
            raise ValueError(f"o_groups must divide num_attention_heads={self.num_attention_heads}, "
                             f"got {self.o_groups}")
        if self.rms_norm_eps != 1e-6:
            raise ValueError(f"rms_norm_eps must be 1e-6 (the course's RMSNorm eps), got {self.rms_norm_eps!r}")

    def layout(self) -> CSA2Layout:
        """The CSA2 schedule as a course_lib.csa2.CSA2Layout (which validates it like config.py does)."""
        return CSA2Layout(self.name, tuple(self.compress_ratios), kv_sources=tuple(self.kv_source_layer_ids),
                          index_sources=tuple(self.index_source_layer_ids),
                          candidate_source=self.candidate_source_layer_id,
                          candidate_blocks=self.candidate_topk_blocks,
                          candidate_block_size=self.candidate_block_size, index_topk=self.index_topk,
                          window=self.sliding_window, head_dim=self.head_dim, n_heads=self.num_attention_heads,
                          index_heads=self.index_n_heads, index_head_dim=self.index_head_dim)

    def replace(self, **changes) -> "NanoV41Config":
        """A copy with some fields changed (validated again)."""
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise ValueError(f"unknown NanoV41Config field(s): {sorted(unknown)}")
        return replace(self, **changes)

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("compress_ratios", "kv_source_layer_ids", "index_source_layer_ids", "engram_layer_ids"):
            d[k] = list(d[k])
        return d


TINY_V41 = NanoV41Config()


# --------------------------------------------------------------------------------------------- CSA2 attention
class CSA2Attention(nn.Module):
    """One CSA2 attention layer (attention.py DeepseekV41Attention, eager path), forward(x, state) -> (y, state).

    q = RoPE(W_qb RMSNorm(W_qa x)) (H heads of D), one shared key/value vector k = RoPE(RMSNorm(W_kv x)) per token;
    query t attends to the keys of t - window < s <= t plus the compressed vectors its top-k picks, with one sink
    logit per head; the output's RoPE slice is rotated back and projected by the grouped W_oa, then W_ob.
    state: dict with "kv" (B, P, D) compressed vectors, "keys" (B, P, d_I) index keys, "topk" (B, T, k), "cand"
    (B, T, P) candidates, "ratio"; a Full layer replaces kv/keys, an index layer replaces topk."""

    def __init__(self, cfg: NanoV41Config, layer: int):
        super().__init__()
        d, H, D = cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim
        lay = cfg.layout()
        self.mode, self.ratio = lay.mode(layer), cfg.compress_ratios[layer]
        self.n_heads, self.head_dim, self.rope_dim = H, D, cfg.qk_rope_head_dim   # names nano.train's counter reads
        self.window, self.rope_base, self.topk = cfg.sliding_window, float(cfg.rope_theta), cfg.index_topk
        self.o_groups, self.o_lora_rank = cfg.o_groups, cfg.o_lora_rank
        self.is_candidate_source = layer == cfg.candidate_source_layer_id
        self.uses_candidates = self.mode in ("full", "reindex") and 0 <= cfg.candidate_source_layer_id < layer
        self.cand_blocks, self.cand_size = cfg.candidate_topk_blocks, cfg.candidate_block_size
        self.wq_a = nn.Linear(d, cfg.q_lora_rank, bias=False)
        self.q_norm = RMSNorm(cfg.q_lora_rank, cfg.rms_norm_eps)
        self.wq_b = nn.Linear(cfg.q_lora_rank, H * D, bias=False)
        self.wkv = nn.Linear(d, D, bias=False)
        self.kv_norm = RMSNorm(D, cfg.rms_norm_eps)
        self.wo_a = nn.Parameter(torch.empty(cfg.o_groups, cfg.o_lora_rank, H * D // cfg.o_groups))
        nn.init.normal_(self.wo_a, std=0.02)
        self.wo_b = nn.Linear(cfg.o_groups * cfg.o_lora_rank, d, bias=False)
        self.sinks = nn.Parameter(torch.zeros(H))
        if self.mode == "full":                       # _Compressor and the indexer's key projection
            self.comp_wkv = nn.Linear(d, D, bias=False)
            self.comp_wgate = nn.Linear(d, D, bias=False) if self.ratio > 1 else None
            self.comp_norm = RMSNorm(D, cfg.rms_norm_eps)
            self.idx_wk = nn.Linear(D, cfg.index_head_dim, bias=False)
            self.idx_k_norm = RMSNorm(cfg.index_head_dim, cfg.rms_norm_eps)
        if self.mode in ("full", "reindex"):          # the indexer's own queries and head weights
            self.idx_wq_b = nn.Linear(cfg.q_lora_rank, cfg.index_n_heads * cfg.index_head_dim, bias=False)
            self.idx_weights = nn.Linear(d, cfg.index_n_heads, bias=False)
            self.idx_heads, self.idx_dim = cfg.index_n_heads, cfg.index_head_dim
        self.index_loss = None

    def _compress(self, x):
        """_Compressor: softmax pooling of `ratio` tokens per channel (ratio 1: a projection), then RMSNorm."""
        B, T, _ = x.shape
        n = T // self.ratio * self.ratio
        v = self.comp_wkv(x[:, :n])
        if self.ratio > 1:
            g = self.comp_wgate(x[:, :n]).unflatten(1, (-1, self.ratio)).softmax(dim=2)
            v = (v.unflatten(1, (-1, self.ratio)) * g).sum(2)
        return self.comp_norm(v)

    def _index(self, x, q_lat, keys):
        """csa2.index_scores on a batch: I[b, s, t] = sum_h w[b, s, h] relu(q[b, s, h] . k[b, t]), -inf unless the
        group of t is complete before s, t < (s + 1) // ratio (attention.py _Indexer.forward)."""
        T, P = x.shape[1], keys.shape[1]
        q = self.idx_wq_b(q_lat).unflatten(-1, (self.idx_heads, self.idx_dim))
        q = partial_rope(q.transpose(1, 2), 0, self.rope_dim, self.rope_base).transpose(1, 2)   # (B, T, h, d_I)
        w = self.idx_weights(x) * (self.idx_dim ** -0.5 * self.idx_heads ** -0.5)
        scores = (torch.einsum("bshd,btd->bsht", q, keys).relu() * w[..., None]).sum(2)
        pos = torch.arange(T, device=x.device)
        visible = torch.arange(P, device=x.device)[None] < ((pos + 1) // self.ratio)[:, None]
        return scores.masked_fill(~visible, float("-inf"))

    def forward(self, x, state: dict):
        B, T, _ = x.shape
        H, D, r = self.n_heads, self.head_dim, self.rope_dim
        self.index_loss = None
        q_lat = self.q_norm(self.wq_a(x))
        q = partial_rope(self.wq_b(q_lat).view(B, T, H, D).transpose(1, 2), 0, r, self.rope_base)   # (B, H, T, D)
        kv = partial_rope(self.kv_norm(self.wkv(x)), 0, r, self.rope_base)                            # (B, T, D)
        pos = torch.arange(T, device=x.device)
        allowed = (pos[None] <= pos[:, None]) & (pos[None] > pos[:, None] - self.window)            # (T, T)
        scores = (torch.einsum("bhtd,bsd->bhts", q, kv) * D ** -0.5).masked_fill(~allowed, float("-inf"))
        keys_all = kv
        if self.mode != "window":
            state = dict(state)
            if self.mode == "full":
                latent = self._compress(x)
                cpos = torch.arange(latent.shape[1], device=x.device) * self.ratio   # a group's first token
                state["kv"] = partial_rope(latent, 0, r, self.rope_base, positions=cpos)
                state["keys"] = partial_rope(self.idx_k_norm(self.idx_wk(latent.detach())), 0, r, self.rope_base,
                                           positions=cpos)
                state["ratio"], state["cand"] = self.ratio, None
            if state.get("kv") is None or state.get("ratio") != self.ratio:
                raise ValueError(f"a {self.mode} layer of ratio {self.ratio} needs an earlier Full layer of that ratio")
            ckv, P = state["kv"], state["kv"].shape[1]
            if self.mode in ("full", "reindex"):
                # the indexer sees detached inputs: only its KL loss trains it (nano-V4's choice, V3.2 §2.1.1)
                I = self._index(x.detach(), q_lat.detach(), state["keys"])
                cand = state.get("cand")
                if self.is_candidate_source:
                    cand = torch.stack([candidate_blocks(I[b], self.cand_blocks, self.cand_size, self.ratio)
                                        for b in range(B)])
                    state["cand"] = cand
                state["topk"] = select_topk(I, self.topk, cand if self.uses_candidates else None)
                if self.training and torch.is_grad_enabled():
                    self.index_loss = self._indexer_loss(I, q, ckv, pos)
            idx = state["topk"]                                                       # (B, T, k), -1 = none
            sel = torch.zeros(B, T, P + 1, dtype=torch.bool, device=x.device)
            sel = sel.scatter(-1, torch.where(idx >= 0, idx, P), True)[..., :P]
            c_scores = (torch.einsum("bhtd,bpd->bhtp", q, ckv) * D ** -0.5).masked_fill(~sel[:, None],
                                                                                      float("-inf"))
            scores = torch.cat([scores, c_scores], dim=-1)
            keys_all = torch.cat([kv, ckv], dim=1)
        sink = self.sinks.view(1, H, 1, 1).expand(B, H, T, 1).to(scores.dtype)
        p = torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :-1]
        o = torch.einsum("bhts,bsd->bhtd", p, keys_all)                            # values = keys (shared KV)
        o = partial_rope(o, 0, r, self.rope_base, sign=-1.0)
        o = o.transpose(1, 2).reshape(B, T, self.o_groups, H * D // self.o_groups)
        o = torch.einsum("btgi,goi->btgo", o, self.wo_a)                           # grouped output projection
        return self.wo_b(o.reshape(B, T, self.o_groups * self.o_lora_rank)), state

    def _indexer_loss(self, I, q, ckv, pos):
        """V3.2 §2.1.1 Eq. 3: KL(main attention over the visible compressed vectors, heads summed, || softmax(I))."""
        with torch.no_grad():
            vis = torch.arange(ckv.shape[1], device=q.device)[None] < ((pos + 1) // self.ratio)[:, None]
            logits = torch.einsum("bhtd,bpd->bhtp", q, ckv) * self.head_dim ** -0.5
            p = torch.softmax(logits.masked_fill(~vis, float("-inf")), -1).nan_to_num(0.0).sum(1)
            target = p / p.sum(-1, keepdim=True).clamp_min(1e-30)
        rows = vis.any(-1)
        if not bool(rows.any()):
            return I.new_zeros(())
        return indexer_kl_loss(I[:, rows], target[:, rows])


# --------------------------------------------------------------------------------------------- the network
class V41Block(nn.Module):
    """One V4.1 layer: [Engram] -> CSA2 attention -> SwiGLU or MoE, with single-pass mHC (model.py DeepseekV41Block)."""

    def __init__(self, cfg: NanoV41Config, layer: int):
        super().__init__()
        d = cfg.hidden_size
        self.attn_norm, self.ffn_norm = RMSNorm(d, cfg.rms_norm_eps), RMSNorm(d, cfg.rms_norm_eps)
        self.attn = CSA2Attention(cfg, layer)
        if layer < cfg.first_k_dense_replace:
            self.ffn = SwiGLU(d, cfg.intermediate_size)
        else:
            self.ffn = MoE(d_model=d, **moe_kwargs(cfg))          # nano-DeepSeek's MoE layer, as nano-V4's
        hc = dict(n_streams=cfg.hc_mult, sinkhorn_iters=cfg.hc_sinkhorn_iters, rms_eps=cfg.rms_norm_eps)
        self.attn_hc, self.ffn_hc = HyperConnection(d, **hc), HyperConnection(d, **hc)
        self.engram = None
        if layer in cfg.engram_layer_ids:
            self.engram = Engram(d, cfg.vocab_size, cfg.engram_table_size, cfg.engram_max_ngram, cfg.engram_heads,
                                 cfg.engram_heads * cfg.engram_head_dim, hc_mult=cfg.hc_mult, layer_id=layer,
                                 layer_ids=cfg.engram_layer_ids, short_conv=False, norm_eps=cfg.rms_norm_eps)

    def forward(self, x, carried, state, ids):
        box = {}

        def attn(h):
            out, box["state"] = self.attn(self.attn_norm(h), state)
            return out

        x, carried = single_pass_block(x, carried, self.attn_hc, attn, self.ffn_hc,
                                       lambda h: self.ffn(self.ffn_norm(h)), self.engram, ids)
        return x, carried, box["state"]


class NanoV41(nn.Module):
    """embed -> hc_mult copies -> V41Blocks (carrying A and the CSA2 state) -> collapse by the last A -> RMSNorm ->
    head. forward(idx, targets=None) -> course_lib.model.ModelOutput, so course_lib.nano.train trains it unchanged."""

    def __init__(self, cfg: NanoV41Config):
        super().__init__()
        if not isinstance(cfg, NanoV41Config):
            raise ValueError(f"cfg must be a NanoV41Config, got {type(cfg).__name__}")
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.blocks = nn.ModuleList(V41Block(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.apply(TinyLM._init_weights)             # the course's small init: first loss about log(vocab)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> ModelOutput:
        if idx.dim() != 2:
            raise ValueError(f"idx must be (batch, time) token ids, got shape {tuple(idx.shape)}")
        x = self.embed(idx).unsqueeze(2).expand(-1, -1, self.cfg.hc_mult, -1).contiguous()
        carried, state = one_hot_mix(x), {}
        for block in self.blocks:
            x, carried, state = block(x, carried, state, idx)
        hidden = (carried.unsqueeze(-1) * x).sum(2)            # collapse with the last FFN-site A (model.py)
        logits = self.head(self.norm(hidden))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
        aux = [b.ffn.aux_loss for b in self.blocks if getattr(b.ffn, "aux_loss", None) is not None]
        aux += [b.attn.index_loss for b in self.blocks if b.attn.index_loss is not None]
        aux_loss = torch.stack(aux).sum() if aux else logits.new_zeros(())
        return ModelOutput(logits, loss, hidden, aux_loss)


def build_model(cfg: NanoV41Config = TINY_V41) -> NanoV41:
    """A NanoV41 with initial weights from the global torch seed."""
    return NanoV41(cfg)


# --------------------------------------------------------------------------------------------- counting
def activated_params(model: nn.Module) -> int:
    """Weights one token multiplies in a forward pass: every parameter except lookup tables (nn.Embedding: the token
    embedding, Engram's n-gram tables, of which a token reads rows_per_token rows), routed experts at K_r / N_r."""
    total = sum(p.numel() for p in model.parameters())
    for m in model.modules():
        if isinstance(m, nn.Embedding):
            total -= m.weight.numel()
        if isinstance(m, Engram):
            total += m.rows_per_token * m.table.embedding_dim
        if isinstance(m, MoE):
            routed = sum(p.numel() for p in m.experts.parameters())
            total -= routed - routed * m.num_experts_per_tok // m.n_routed_experts
    return total


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def attention_terms(cfg, seq_len: int) -> tuple[float, float]:
    """(query-key pairs x heads x (d_qk + d_v), index scores x index heads x index dim) per token, summed over
    layers and averaged over the positions of a seq_len window; for a NanoConfig, a NanoV4Config or a NanoV41Config."""
    positive_int("seq_len", seq_len)
    t = range(seq_len)
    if isinstance(cfg, NanoConfig):                      # MLA, full causal attention
        width = cfg.num_attention_heads * (cfg.qk_nope_head_dim + cfg.qk_rope_head_dim + cfg.v_head_dim)
        return cfg.num_hidden_layers * _mean(s + 1 for s in t) * width, 0.0
    if not isinstance(cfg, (NanoV4Config, NanoV41Config)):
        raise ValueError(f"cfg must be a NanoConfig, NanoV4Config or NanoV41Config, got {type(cfg).__name__}")
    width = cfg.num_attention_heads * 2 * cfg.head_dim   # shared KV: the key is also the value
    index_width = cfg.index_n_heads * cfg.index_head_dim
    pairs = scored = 0.0
    for layer in range(cfg.num_hidden_layers):
        pairs += _mean(min(s + 1, cfg.sliding_window) for s in t)
        if isinstance(cfg, NanoV4Config):
            kind, m = cfg.layer_types[layer], cfg.compress_rate(layer)
            if kind == "csa":
                pairs += _mean(min(cfg.index_topk, (s + 1) // m) for s in t)
                scored += _mean((s + 1) // m for s in t)
            elif kind == "hca":
                pairs += _mean((s + 1) // m for s in t)
        else:
            r, mode = cfg.compress_ratios[layer], cfg.layout().mode(layer)
            if mode == "window":
                continue
            cap = cfg.candidate_topk_blocks * cfg.candidate_block_size
            limited = mode in ("full", "reindex") and 0 <= cfg.candidate_source_layer_id < layer
            pairs += _mean(min(cfg.index_topk, (s + 1) // r) for s in t)
            if mode in ("full", "reindex"):
                scored += _mean(min((s + 1) // r, cap) if limited else (s + 1) // r for s in t)
    return pairs * width, scored * index_width


def build_any(cfg) -> nn.Module:
    """nano.build_model, nano.v4.build_model or build_model, by the config's type."""
    if isinstance(cfg, NanoV41Config):
        return build_model(cfg)
    if isinstance(cfg, NanoV4Config):
        return build_v4(cfg)
    return build_nano(cfg)


def train_flops_per_token(cfg, seq_len: int = 64) -> float:
    """Training FLOPs per token (module docstring): 6 x activated weights + 6 x attention and index terms.
    The weights are counted on a model built from cfg (on the meta device: no memory, no random numbers)."""
    with torch.device("meta"):
        model = build_any(cfg)
    attn, index = attention_terms(cfg, seq_len)
    return 6.0 * activated_params(model) + 6.0 * attn + 6.0 * index


def total_params(cfg) -> int:
    """All parameters (lookup tables included) of the model cfg builds."""
    with torch.device("meta"):
        return sum(p.numel() for p in build_any(cfg).parameters())


def active_params(cfg: NanoV41Config, phase: str) -> int:
    """Weights per token at "decode" (every layer, the head) or "prefill": the encoder, plus the first decoder
    layer's compressor and index-key projection (they fill the decoder's cache); course_lib.nano.v41.active_params
    at toy scale, counted on the modules."""
    if phase not in ("prefill", "decode"):
        raise ValueError(f"phase must be 'prefill' or 'decode', got {phase!r}")
    with torch.device("meta"):
        model = build_model(cfg)
    if phase == "decode":
        return activated_params(model)
    enc, dec = encoder_decoder(cfg.layout())
    tiny = nn.ModuleList([model.blocks[i] for i in enc])
    a = model.blocks[dec[0]].attn
    writer = sum(p.numel() for m in (a.comp_wkv, a.comp_wgate, a.comp_norm, a.idx_wk, a.idx_k_norm)
                 if m is not None for p in m.parameters())
    return activated_params(tiny) + writer


def kv_cache_bytes_per_token(cfg, context: int, bytes_per_value: int = 2, shared: bool = True) -> float:
    """Cache bytes per token of a `context`-token sequence (bf16 values by default), summed over layers.
    nano-DeepSeek (MLA): the latent c^KV and the RoPE key per token and layer. nano-V4: every layer's window of
    min(S, window) shared-KV vectors, compressed entries S // m, and CSA's index keys. nano-V4.1: the windows, and
    compressed vectors and index keys only in the Full layers (the others read them); shared=False counts them in
    every compressed layer, as if each kept its own (csa2.cache_bytes' shared=False)."""
    positive_int("context", context)
    positive_int("bytes_per_value", bytes_per_value)
    S = context
    if isinstance(cfg, NanoConfig):
        return float(cfg.num_hidden_layers * (cfg.kv_lora_rank + cfg.qk_rope_head_dim) * bytes_per_value)
    if not isinstance(cfg, (NanoV4Config, NanoV41Config)):
        raise ValueError(f"cfg must be a NanoConfig, NanoV4Config or NanoV41Config, got {type(cfg).__name__}")
    D, di = cfg.head_dim, cfg.index_head_dim
    values = cfg.num_hidden_layers * min(S, cfg.sliding_window) * D
    for layer in range(cfg.num_hidden_layers):
        if isinstance(cfg, NanoV4Config):
            m = cfg.compress_rate(layer)
            if m:
                values += (S // m) * (D + (di if cfg.layer_types[layer] == "csa" else 0))
        elif cfg.layout().mode(layer) == "full" or (not shared and cfg.compress_ratios[layer]):
            values += (S // cfg.compress_ratios[layer]) * (D + di)
    return values * bytes_per_value / S


# --------------------------------------------------------------------------------------------- equal FLOPs
FLOPS_TOLERANCE = 0.02       # the three models' training FLOPs per token agree within 2% of nano-V4.1's


def fit_ffn_width(cfg, target: float, seq_len: int = 64) -> int:
    """The expert width h (moe_intermediate_size; the dense layers get (K_r + N_s) h, V3's rule, as nano.TINY) that
    brings cfg's training FLOPs per token closest to `target`. The FLOPs are affine in h, so two counts solve it."""
    positive_int("seq_len", seq_len)
    if not target > 0:
        raise ValueError(f"target must be a positive number of FLOPs, got {target!r}")

    def at(h):
        return cfg.replace(moe_intermediate_size=h, intermediate_size=(cfg.num_experts_per_tok +
                                                                       cfg.n_shared_experts) * h)
    f1, f2 = train_flops_per_token(at(16), seq_len), train_flops_per_token(at(32), seq_len)
    guess = round(16 + (target - f1) * 16 / (f2 - f1))
    if guess < 1:
        raise ValueError(f"target={target:.4g} is below what cfg costs with experts of width 1")
    return min((h for h in (guess - 1, guess, guess + 1) if h >= 1),
               key=lambda h: abs(train_flops_per_token(at(h), seq_len) - target))


def equal_flops_configs() -> dict:
    """notebook 13 §6's models, 4 layers each, d = 96, the same MoE layout (dense first layer, 8 routed + 1 shared
    experts, top-2): nano-V4.1 as TINY_V41; nano-DeepSeek (MLA, no MTP), nano-V4 (mHC + sliding / CSA / HCA) and the
    ablation nano-V4.1 without its Engram layer, each with the expert width fit_ffn_width gives for nano-V4.1's
    FLOPs at 64 tokens (tests/nano re-derive it)."""
    w = EQUAL_FLOPS_WIDTHS
    ds = TINY.replace(name="nano-DeepSeek (MLA, no MTP)", num_nextn_predict_layers=0, num_hidden_layers=4,
                             moe_intermediate_size=w["nano-DeepSeek"], intermediate_size=3 * w["nano-DeepSeek"])
    v4c = TINY_V4.replace(name="nano-V4 (mHC, sliding/CSA/HCA)", num_hidden_layers=4,
                            layer_types=("sliding", "csa", "hca", "csa"), moe_intermediate_size=w["nano-V4"],
                            intermediate_size=3 * w["nano-V4"])
    no_engram = TINY_V41.replace(name="nano-V4.1 without Engram", engram_layer_ids=(),
                                 moe_intermediate_size=w["nano-V4.1 without Engram"],
                                 intermediate_size=3 * w["nano-V4.1 without Engram"])
    return {"nano-DeepSeek": ds, "nano-V4": v4c, "nano-V4.1": TINY_V41, "nano-V4.1 without Engram": no_engram}


# set from fit_ffn_width (checked by the tests)
EQUAL_FLOPS_WIDTHS = {"nano-DeepSeek": 80, "nano-V4": 45, "nano-V4.1 without Engram": 53}
