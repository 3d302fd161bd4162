"""nano-DeepSeek <-> transformers' DeepseekV3ForCausalLM, in the checkpoint layout of DeepSeek's own release.

``to_transformers(model, directory)`` writes ``config.json`` (DeepseekV3Config field names) and
``model.safetensors`` that ``transformers.DeepseekV3ForCausalLM.from_pretrained(directory)`` loads;
``from_transformers(directory)`` reads them back into the course model, MTP module included, bit for bit.

Tensor names (README_WEIGHTS.md of github.com/deepseek-ai/DeepSeek-V3; transformers' modeling_deepseek_v3.py):
  model.embed_tokens.weight, model.norm.weight, lm_head.weight
  model.layers.{i}.input_layernorm / post_attention_layernorm                    <- blocks.i.attn_norm / ffn_norm
  model.layers.{i}.self_attn.q_a_proj, q_a_layernorm, q_b_proj (q_proj without q_lora_rank),
                            kv_a_proj_with_mqa, kv_a_layernorm, kv_b_proj, o_proj  <- MLA q_down, q_norm, q_up,
                                                                                   kv_down, kv_norm, kv_up, out
  dense layers:  model.layers.{i}.mlp.{gate,up,down}_proj                          <- SwiGLU w1, w3, w2
  MoE layers:    model.layers.{i}.mlp.gate.weight, mlp.gate.e_score_correction_bias <- MoE gate, its bias buffer
                 model.layers.{i}.mlp.experts.{e}.{gate,up,down}_proj               <- RoutedExperts gate_up[e], down[e]
                 model.layers.{i}.mlp.shared_experts.{gate,up,down}_proj            <- MoE shared_experts
  MTP module k:  stored as decoder layer L = num_hidden_layers + k - 1 (V3's release: layer 61) with the same
                 names plus enorm, hnorm, eh_proj, shared_head.norm, shared_head.head and its own copy of
                 embed_tokens. transformers builds only layers 0..L-1, so it reports these as unexpected and skips
                 them; the main model loads completely.

Two layout details:
  * eh_proj: V3 Eq. 21 writes M_k [RMSNorm(h); RMSNorm(Emb)], the course's MTPModule concatenates in that order,
    but DeepSeek's released weights (and the engines that run them, e.g. vLLM's deepseek_mtp.py) concatenate
    [enorm(Emb); hnorm(h)]. The export swaps the two column blocks so the file matches the release.
  * RoPE: with rope_interleave (DeepSeek's layout) the rotated pairs are (x0, x1), (x2, x3), ...; without it they are
    (x_j, x_{j + d/2}). ``to_transformers(..., rope_interleave=False)`` permutes the rows of W^QR and W^KR so an
    interleaved course model is written in the other layout with the same outputs (the attention scores are dot
    products, unchanged when q and k are permuted alike); ``from_transformers`` reads either layout.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
import torch.nn as nn

from course_lib.mtp import MTPModel
from course_lib.nano import NanoConfig, build_model, is_moe, main_model

CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"
# NanoConfig fields that are also DeepseekV3Config fields (everything except the name and the course's training knobs)
HF_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "moe_intermediate_size", "num_hidden_layers",
             "first_k_dense_replace", "num_attention_heads", "q_lora_rank", "kv_lora_rank", "qk_nope_head_dim",
             "qk_rope_head_dim", "v_head_dim", "n_routed_experts", "n_shared_experts", "num_experts_per_tok",
             "n_group", "topk_group", "routed_scaling_factor", "norm_topk_prob", "num_nextn_predict_layers",
             "max_position_embeddings", "rope_interleave", "rms_norm_eps", "tie_word_embeddings")
COURSE_FIELDS = ("name", "bias_update_speed", "seq_aux_loss_alpha", "aux_loss_alpha", "mtp_loss_weight")


# --------------------------------------------------------------------------------------------- config
def hf_config_dict(cfg: NanoConfig, rope_interleave: bool | None = None) -> dict:
    """config.json contents: DeepseekV3Config fields, plus the course's training knobs under "course_nano"."""
    d = {k: getattr(cfg, k) for k in HF_FIELDS}
    d.update(architectures=["DeepseekV3ForCausalLM"], model_type="deepseek_v3", hidden_act="silu",
             num_key_value_heads=cfg.num_attention_heads, attention_bias=False, attention_dropout=0.0,
             rope_theta=cfg.rope_theta, rope_scaling=None, scoring_func="sigmoid", topk_method="noaux_tc",
             initializer_range=0.02, use_cache=True, bos_token_id=None, eos_token_id=None, pad_token_id=None,
             torch_dtype="float32", course_nano={k: getattr(cfg, k) for k in COURSE_FIELDS})
    if rope_interleave is not None:
        d["rope_interleave"] = bool(rope_interleave)
    return d


def config_from_dict(d: dict) -> NanoConfig:
    """NanoConfig from a config.json written by to_transformers (or any DeepseekV3 config with our constraints)."""
    if d.get("model_type") not in (None, "deepseek_v3"):
        raise ValueError(f"config.json: model_type must be 'deepseek_v3', got {d.get('model_type')!r}")
    missing = [k for k in HF_FIELDS if k not in d and k not in ("rope_interleave", "tie_word_embeddings")]
    if missing:
        raise ValueError(f"config.json lacks the field(s) {missing}")
    kw = {k: d[k] for k in HF_FIELDS if k in d}
    theta = d.get("rope_theta") or (d.get("rope_parameters") or {}).get("rope_theta", 10000.0)
    kw["rope_theta"] = float(theta)
    kw["routed_scaling_factor"] = float(kw["routed_scaling_factor"])
    kw.update({k: v for k, v in (d.get("course_nano") or {}).items() if k in COURSE_FIELDS})
    return NanoConfig(**kw)


# --------------------------------------------------------------------------------------------- tensor map
def _rope_perm(dr: int) -> torch.Tensor:
    """Interleaved -> half layout: features (x0, x1, x2, x3, ...) -> (x0, x2, ... | x1, x3, ...)."""
    return torch.cat([torch.arange(0, dr, 2), torch.arange(1, dr, 2)])


def _ffn_slots(prefix: str, ffn: nn.Module) -> list:
    """(hf_name, course_tensor, course_index) for a dense SwiGLU or a MoE layer."""
    if hasattr(ffn, "experts"):
        h = ffn.moe_intermediate_size
        slots = [(f"{prefix}.gate.weight", ffn.gate.weight, ...),
                 (f"{prefix}.gate.e_score_correction_bias", ffn.e_score_correction_bias, ...)]
        for e in range(ffn.n_routed_experts):
            base = f"{prefix}.experts.{e}"
            slots += [(f"{base}.gate_proj.weight", ffn.experts.gate_up, (e, slice(0, h))),
                      (f"{base}.up_proj.weight", ffn.experts.gate_up, (e, slice(h, 2 * h))),
                      (f"{base}.down_proj.weight", ffn.experts.down, (e,))]
        if ffn.shared_experts is not None:
            slots += _swiglu_slots(f"{prefix}.shared_experts", ffn.shared_experts)
        return slots
    return _swiglu_slots(prefix, ffn)


def _swiglu_slots(prefix: str, m: nn.Module) -> list:
    # course_lib.layers.SwiGLU: w1 gate, w3 up, w2 down
    return [(f"{prefix}.gate_proj.weight", m.w1.weight, ...), (f"{prefix}.up_proj.weight", m.w3.weight, ...),
            (f"{prefix}.down_proj.weight", m.w2.weight, ...)]


def _block_slots(prefix: str, block: nn.Module) -> list:
    a = block.attn
    slots = [(f"{prefix}.input_layernorm.weight", block.attn_norm.weight, ...),
             (f"{prefix}.post_attention_layernorm.weight", block.ffn_norm.weight, ...)]
    att = f"{prefix}.self_attn"
    if a.q_down is None:
        slots.append((f"{att}.q_proj.weight", a.q_up.weight, ...))
    else:
        slots += [(f"{att}.q_a_proj.weight", a.q_down.weight, ...), (f"{att}.q_a_layernorm.weight", a.q_norm.weight, ...),
                  (f"{att}.q_b_proj.weight", a.q_up.weight, ...)]
    slots += [(f"{att}.kv_a_proj_with_mqa.weight", a.kv_down.weight, ...),
              (f"{att}.kv_a_layernorm.weight", a.kv_norm.weight, ...),
              (f"{att}.kv_b_proj.weight", a.kv_up.weight, ...), (f"{att}.o_proj.weight", a.out.weight, ...)]
    return slots + _ffn_slots(f"{prefix}.mlp", block.ffn)


def tensor_slots(model: nn.Module) -> list:
    """Every tensor of the checkpoint as (hf_name, course_tensor, index into it). MTP entries whose value is the
    shared embedding/head, and eh_proj's two halves, appear as their own slots."""
    lm = main_model(model)
    if lm.cfg.attention != "mla":
        raise ValueError("model: only MLA models can be exported (attention must be 'mla'; MHA is an ablation)")
    d, L = lm.cfg.hidden_size, lm.cfg.num_hidden_layers
    slots = [("model.embed_tokens.weight", lm.embed.weight, ...), ("model.norm.weight", lm.norm.weight, ...),
             ("lm_head.weight", lm.head.weight, ...)]
    for i, block in enumerate(lm.blocks):
        slots += _block_slots(f"model.layers.{i}", block)
    if isinstance(model, MTPModel):
        for m in model.mtp:
            p = f"model.layers.{L + m.k - 1}"
            slots += [(f"{p}.embed_tokens.weight", m.embed.weight, ...), (f"{p}.enorm.weight", m.enorm.weight, ...),
                      (f"{p}.hnorm.weight", m.hnorm.weight, ...),
                      # release order [enorm(Emb); hnorm(h)] = our columns [d:2d] then [0:d]
                      (f"{p}.eh_proj.weight", m.proj.weight, (slice(None), torch.cat(
                          [torch.arange(d, 2 * d), torch.arange(0, d)]))),
                      (f"{p}.shared_head.norm.weight", m.norm.weight, ...),
                      (f"{p}.shared_head.head.weight", m.head.weight, ...)]
            slots += _block_slots(p, m.block)
    return slots


def _rope_rows(model: nn.Module) -> dict:
    """hf_name -> the rows holding RoPE features (W^QR per head in q_up; W^KR in kv_down)."""
    rows = {}
    lm = main_model(model)
    blocks = list(lm.blocks) + ([m.block for m in model.mtp] if isinstance(model, MTPModel) else [])
    names = [n for n, *_ in tensor_slots(model)]
    for n in names:
        if n.endswith(("q_b_proj.weight", "q_proj.weight", "kv_a_proj_with_mqa.weight")):
            a = blocks[int(n.split(".")[2])].attn
            dn, dr, dc, H = a.qk_nope_head_dim, a.qk_rope_head_dim, a.kv_lora_rank, a.n_heads
            if n.endswith("kv_a_proj_with_mqa.weight"):
                rows[n] = torch.arange(dc, dc + dr)
            else:
                rows[n] = torch.cat([h * (dn + dr) + dn + torch.arange(dr) for h in range(H)])
    return rows


def _permute_rope(tensors: dict, model: nn.Module, inverse: bool) -> None:
    """Re-order the RoPE rows of W^QR and W^KR between the two layouts (in place in `tensors`).

    inverse=False: interleaved -> half layout (half feature j is interleaved feature perm[j]); True: back."""
    dr = main_model(model).blocks[0].attn.qk_rope_head_dim
    perm = _rope_perm(dr)
    src_of = torch.argsort(perm) if inverse else perm
    for name, rows in _rope_rows(model).items():
        blocks = rows.view(-1, dr)                          # one block of dr rows per head (one for W^KR)
        t = tensors[name].clone()
        t[blocks.reshape(-1)] = tensors[name][blocks[:, src_of].reshape(-1)]
        tensors[name] = t


# --------------------------------------------------------------------------------------------- export / import
def state_for_export(model: nn.Module, rope_interleave: bool | None = None) -> dict:
    """The checkpoint's tensors (name -> contiguous CPU tensor) in DeepSeek's release layout."""
    out = {name: t.detach()[idx].contiguous().cpu().clone() for name, t, idx in tensor_slots(model)}
    if rope_interleave is not None and rope_interleave != main_model(model).blocks[0].attn.rope_interleave:
        if not rope_interleave:
            _permute_rope(out, model, inverse=False)      # interleaved pairs -> half layout
        else:
            _permute_rope(out, model, inverse=True)       # half layout -> interleaved pairs
    return out


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename: a crash never leaves a half-written file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)                 # mkstemp creates owner-only files; a checkpoint is for sharing
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def to_transformers(model: nn.Module, directory, cfg: NanoConfig | None = None,
                    rope_interleave: bool | None = None) -> Path:
    """Write config.json and model.safetensors for transformers.DeepseekV3ForCausalLM.from_pretrained(directory).

    cfg: the NanoConfig the model was built from (default: model.nano_config, set by from_transformers/train_v3).
    rope_interleave: the RoPE layout to write (default: the model's own); the other one permutes W^QR and W^KR.
    """
    from safetensors.torch import save_file

    cfg = cfg if cfg is not None else getattr(model, "nano_config", None)
    if not isinstance(cfg, NanoConfig):
        raise ValueError("cfg must be the NanoConfig the model was built from (the model carries none)")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = state_for_export(model, rope_interleave)
    _atomic_write(directory / WEIGHTS_NAME, lambda p: save_file(tensors, p, metadata={"format": "pt"}))
    text = json.dumps(hf_config_dict(cfg, rope_interleave), indent=2)
    _atomic_write(directory / CONFIG_NAME, lambda p: Path(p).write_text(text))
    return directory


def load_state(model: nn.Module, tensors: dict, rope_interleave: bool | None = None) -> None:
    """Copy checkpoint tensors into the model. Every tensor must be present with its exact shape, none may be left
    over; the MTP copies of embed_tokens and shared_head.head must equal the main model's (they are shared here)."""
    slots = tensor_slots(model)
    names = {n for n, *_ in slots}
    for name, t, idx in slots:
        if name not in tensors:
            raise ValueError(f"checkpoint is missing tensor {name!r}")
        want = tuple(t.detach()[idx].shape)
        if tuple(tensors[name].shape) != want:
            raise ValueError(f"checkpoint tensor {name!r} has shape {tuple(tensors[name].shape)}, expected {want}")
    extra = sorted(set(tensors) - names)
    if extra:
        raise ValueError(f"checkpoint has unexpected tensor {extra[0]!r}" + (f" (and {len(extra) - 1} more)"
                                                                              if len(extra) > 1 else ""))
    tensors = dict(tensors)
    if rope_interleave is not None and rope_interleave != main_model(model).blocks[0].attn.rope_interleave:
        _permute_rope(tensors, model, inverse=rope_interleave)
    with torch.no_grad():
        for name, t, idx in slots:
            src = tensors[name].to(dtype=t.dtype, device=t.device)
            if ".embed_tokens." in name and name != "model.embed_tokens.weight" or ".shared_head.head." in name:
                main = tensors["lm_head.weight" if "shared_head" in name else "model.embed_tokens.weight"]
                if not torch.equal(tensors[name], main):
                    raise ValueError(f"checkpoint tensor {name!r} differs from the main model's copy; "
                                     "the course's MTP module shares them")
                continue
            if idx is ...:
                t.copy_(src)
            elif isinstance(idx, tuple) and len(idx) == 2 and torch.is_tensor(idx[1]):
                t[:, idx[1]] = src                      # eh_proj's swapped column blocks
            else:
                t[idx] = src


def from_transformers(directory, dtype=torch.float32) -> nn.Module:
    """Load a directory written by to_transformers (config.json + model.safetensors) into a course model.

    Returns an MTPModel (or a TinyLM without MTP layers) with ``nano_config`` set, in eval mode."""
    from safetensors.torch import load_file

    directory = Path(directory)
    for f in (CONFIG_NAME, WEIGHTS_NAME):
        if not (directory / f).exists():
            raise ValueError(f"directory {str(directory)!r} has no {f}")
    cfg = config_from_dict(json.loads((directory / CONFIG_NAME).read_text()))
    layout = cfg.rope_interleave
    model = build_model(cfg).to(dtype)
    load_state(model, load_file(str(directory / WEIGHTS_NAME)), rope_interleave=layout)
    model.nano_config = cfg
    return model.eval()
