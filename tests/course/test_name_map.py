"""Names shared with transformers' DeepSeek-V3.

Config: every ModelConfig field and MLA / MoE keyword that DeepSeek-V3 also has carries DeepseekV3Config's name, and
course_lib.nano hands its NanoConfig to TinyLM without renaming anything.
Weights (docs/name_map.md): every course name is a key of a course model's state dict, every transformers name a key
of a tiny transformers DeepseekV3ForCausalLM's state dict (so the map cannot silently go stale)."""
import dataclasses
import re
from pathlib import Path

import pytest
import torch

from course_lib import nano
from course_lib.model import OLD_CONFIG_NAMES, ModelConfig, TinyLM
from course_lib.mtp import MTPModel

# ModelConfig's switches between the course's building blocks: DeepSeek-V3 has one kind of each, so no name for them
COURSE_ONLY_FIELDS = {"ffn", "moe", "attention", "mla"}
# MoE keywords transformers' config does not hold: the affinity function (DeepSeek's own config.json has it) and
# the course's training knobs
COURSE_ONLY_MOE_KEYS = {"scoring_func", "bias_update_speed", "aux_loss_alpha", "seq_aux_loss_alpha"}


def _is_deepseek_v3_config_name(name, example) -> bool:
    """DeepseekV3Config has a field called name (a default instance holds it) and keeps a value passed under it.

    Recent transformers keep rope_theta inside rope_parameters; unknown keywords become attributes too, hence the
    default instance."""
    from transformers import DeepseekV3Config

    def stored(hf_cfg):
        if name in hf_cfg.to_dict():
            return getattr(hf_cfg, name)
        return (getattr(hf_cfg, "rope_parameters", None) or {}).get(name, "missing")

    if stored(DeepseekV3Config()) == "missing":
        return False
    value = not example if isinstance(example, bool) else 12345.5 if isinstance(example, float) else 6
    return stored(DeepseekV3Config(**{name: value})) == value


def test_model_config_fields_are_deepseek_v3_config_names():
    pytest.importorskip("transformers")
    cfg = ModelConfig(vocab_size=32)
    shared = [f.name for f in dataclasses.fields(ModelConfig) if f.name not in COURSE_ONLY_FIELDS]
    assert {"hidden_size", "num_hidden_layers", "num_attention_heads", "max_position_embeddings",
            "first_k_dense_replace", "intermediate_size", "rope_theta"} <= set(shared)
    for name in shared:
        assert _is_deepseek_v3_config_name(name, getattr(cfg, name)), name
    assert not _is_deepseek_v3_config_name("d_model", 64)           # the check can fail
    assert not set(OLD_CONFIG_NAMES) & {f.name for f in dataclasses.fields(ModelConfig)}


def test_mla_and_moe_keywords_are_deepseek_v3_config_names():
    pytest.importorskip("transformers")
    built = nano.model_config(nano.TINY)
    assert {"rope_interleave", "rms_norm_eps"} <= set(built.mla)
    for key, value in built.mla.items():
        assert _is_deepseek_v3_config_name(key, value), f"mla keyword {key}"
    for key in set(built.moe) - COURSE_ONLY_MOE_KEYS:
        assert _is_deepseek_v3_config_name(key, built.moe[key]), f"moe keyword {key}"
    assert not set(OLD_CONFIG_NAMES) & (set(built.mla) | set(built.moe))


@pytest.mark.parametrize("cfg", [nano.TINY, nano.dense_baseline(nano.TINY), nano.TINY.replace(attention="mha")])
def test_nano_config_reaches_tiny_lm_without_renaming(cfg):
    built = nano.model_config(cfg)
    for f in dataclasses.fields(ModelConfig):
        if f.name not in ("ffn", "moe", "mla"):
            assert getattr(built, f.name) == getattr(cfg, f.name), f.name
    for key, value in (built.mla or {}).items():
        assert value == getattr(cfg, key), key
    for key, value in (built.moe or {}).items():
        assert key == "scoring_func" or value == getattr(cfg, key), key

DOC = Path(__file__).resolve().parents[2] / "docs" / "name_map.md"
# layer indices the placeholders stand for in the tiny models below: 1 dense layer, then MoE layers
SUBST = {"{d}": "0", "{i}": "1", "{n}": "3"}


def tables() -> dict[str, list[list[str]]]:
    """Section title -> rows of [course, paper, inference, transformers] cells."""
    out, section = {}, None
    for line in DOC.read_text().splitlines():
        if line.startswith("## "):
            section = line[3:]
        elif line.startswith("| ") and section and not line.startswith("| course") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            assert len(cells) == 4, line
            out.setdefault(section, []).append(cells)
    return out


def names(cell: str) -> list[str]:
    found = re.findall(r"`([^`]+)`", cell)
    for key, value in SUBST.items():
        found = [n.replace(key, value) for n in found]
    return found


def course_models():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=32, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                      max_position_embeddings=16, attention="mla",
                      mla=dict(kv_lora_rank=8, q_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8),
                      ffn="moe", first_k_dense_replace=1, moe=dict(n_routed_experts=4, num_experts_per_tok=2))
    lm = TinyLM(cfg)
    return lm, MTPModel(lm, depth=1)


def test_the_doc_has_every_section_and_rows():
    t = tables()
    assert [s.split(" (")[0] for s in t] == ["The transformer around them", "Multi-head Latent Attention",
                                             "DeepSeekMoE", "Multi-token prediction"]
    assert sum(len(rows) for rows in t.values()) >= 25


def test_every_course_name_is_in_a_course_state_dict():
    lm, mtp_model = course_models()
    keys = set(lm.state_dict())
    mtp_keys = set(mtp_model.state_dict())
    for section, rows in tables().items():
        for row in rows:
            for name in names(row[0]):
                assert name in (mtp_keys if section.startswith("Multi-token") else keys), f"{section}: {name}"


def test_every_transformers_name_is_in_transformers_state_dict():
    pytest.importorskip("transformers")
    from transformers import DeepseekV3Config
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3ForCausalLM
    cfg = DeepseekV3Config(vocab_size=32, hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
                           num_hidden_layers=3, first_k_dense_replace=1, n_routed_experts=4, n_shared_experts=1,
                           num_experts_per_tok=2, n_group=1, topk_group=1, num_attention_heads=2,
                           num_key_value_heads=2, q_lora_rank=16, kv_lora_rank=8, qk_nope_head_dim=8,
                           qk_rope_head_dim=4, v_head_dim=8)
    keys = set(DeepseekV3ForCausalLM(cfg).state_dict())
    checked = 0
    for section, rows in tables().items():
        for row in rows:
            for name in names(row[3]):
                assert name in keys, f"{section}: {name} is not a key of transformers' DeepseekV3ForCausalLM"
                checked += 1
            if row[3] == "—":
                assert section.startswith("Multi-token")      # only MTP is missing from transformers
    assert checked >= 20


def test_course_and_transformers_shapes_agree_row_by_row():
    """The rows pair the right tensors: same shape (stacked experts included), except where the course fuses."""
    pytest.importorskip("transformers")
    from transformers import DeepseekV3Config
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3ForCausalLM
    cfg = DeepseekV3Config(vocab_size=32, hidden_size=32, intermediate_size=96, moe_intermediate_size=16,
                           num_hidden_layers=3, first_k_dense_replace=1, n_routed_experts=4, n_shared_experts=1,
                           num_experts_per_tok=2, n_group=1, topk_group=1, num_attention_heads=2,
                           num_key_value_heads=2, q_lora_rank=16, kv_lora_rank=8, qk_nope_head_dim=8,
                           qk_rope_head_dim=4, v_head_dim=8)
    theirs = DeepseekV3ForCausalLM(cfg).state_dict()
    ours = course_models()[0].state_dict()          # intermediate_size of hidden_size 32 is 96, as above
    for section, rows in tables().items():
        if section.startswith("Multi-token"):
            continue
        for row in rows:
            (course,), (ref,) = names(row[0]), names(row[3])
            assert ours[course].shape == theirs[ref].shape, f"{course} {tuple(ours[course].shape)} vs {ref}"
