"""docs/name_map.md: every course name is a key of a course model's state dict, every transformers name a key of a
tiny transformers DeepseekV3ForCausalLM's state dict (so the map cannot silently go stale)."""
import re
from pathlib import Path

import pytest
import torch

from course_lib.model import ModelConfig, TinyLM
from course_lib.mtp import MTPModel

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
    cfg = ModelConfig(vocab_size=32, d_model=32, n_layers=3, n_heads=2, max_seq_len=16, attention="mla",
                      mla=dict(kv_lora_rank=8, q_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8),
                      ffn="moe", n_dense_layers=1, moe=dict(n_routed_experts=4, num_experts_per_tok=2))
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
    ours = course_models()[0].state_dict()          # ffn_hidden of d_model 32 is 96, as intermediate_size above
    for section, rows in tables().items():
        if section.startswith("Multi-token"):
            continue
        for row in rows:
            (course,), (ref,) = names(row[0]), names(row[3])
            assert ours[course].shape == theirs[ref].shape, f"{course} {tuple(ours[course].shape)} vs {ref}"
