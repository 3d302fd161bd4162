"""course_lib.configs_v4: the attention configurations of DeepSeek-V3.2, V4-Flash and V4-Pro.

The expected numbers are the official config files' (quoted in the module's docstring and docs/fact_audit.md),
and the layer counts are counted here from the lists independently of V4Model.count.
"""
import dataclasses

import pytest

from course_lib.configs_v4 import (DEEPSEEK_V32, DEEPSEEK_V4_FLASH, DEEPSEEK_V4_PRO, MODELS, V4_FLASH_COMPRESS_RATIOS,
                                   V4_PRO_COMPRESS_RATIOS, DSAModel, V4Model, v4_layer_ratios)


def test_official_compress_ratio_lists_have_one_entry_per_layer_plus_the_mtp_layer():
    assert len(V4_FLASH_COMPRESS_RATIOS) == 43 + 1 and len(V4_PRO_COMPRESS_RATIOS) == 61 + 1
    assert V4_FLASH_COMPRESS_RATIOS[:4] == (0, 0, 4, 128) and V4_FLASH_COMPRESS_RATIOS[-3:] == (128, 4, 0)
    assert V4_PRO_COMPRESS_RATIOS[:4] == (128, 128, 4, 128) and V4_PRO_COMPRESS_RATIOS[-3:] == (128, 4, 0)
    assert set(V4_FLASH_COMPRESS_RATIOS) == set(V4_PRO_COMPRESS_RATIOS) == {0, 4, 128}


def test_layer_rule_reproduces_both_official_lists():
    assert v4_layer_ratios(43, (0, 0)) == V4_FLASH_COMPRESS_RATIOS[:43]
    assert v4_layer_ratios(61, (128, 128)) == V4_PRO_COMPRESS_RATIOS[:61]
    # the rule by hand: the head, then CSA and HCA alternating, starting with CSA
    assert v4_layer_ratios(6, (0,), csa=2, hca=8) == (0, 2, 8, 2, 8, 2)
    assert v4_layer_ratios(2, (0, 0)) == (0, 0)


@pytest.mark.parametrize("model,sliding,csa,hca", [(DEEPSEEK_V4_FLASH, 2, 21, 20), (DEEPSEEK_V4_PRO, 0, 30, 31)])
def test_layer_counts_of_the_v4_models(model, sliding, csa, hca):
    """V4-Flash: 2 sliding-only + 21 CSA + 20 HCA decoder layers; V4-Pro: 30 CSA + 31 HCA (the MTP layer left out)."""
    ratios = list(model.layer_ratios)
    assert (ratios.count(0), ratios.count(4), ratios.count(128)) == (sliding, csa, hca)
    assert (model.count("sliding"), model.count("csa"), model.count("hca")) == (sliding, csa, hca)
    assert model.n_layers == sliding + csa + hca == len(ratios)


def test_v4_fields_from_the_config_files():
    f, p = DEEPSEEK_V4_FLASH, DEEPSEEK_V4_PRO
    assert (f.n_heads, f.head_dim, f.rope_dim, f.window, f.index_topk) == (64, 512, 64, 128, 512)
    assert (p.n_heads, p.head_dim, p.rope_dim, p.window, p.index_topk) == (128, 512, 64, 128, 1024)
    for m in (f, p):
        assert (m.csa_rate, m.hca_rate, m.index_n_heads, m.index_head_dim) == (4, 128, 64, 128)
    assert (f.activated_params, p.activated_params) == (13.0, 49.0)


def test_v32_fields_from_the_config_file():
    v = DEEPSEEK_V32
    assert (v.n_layers, v.n_heads, v.kv_lora_rank, v.rope_dim) == (61, 128, 512, 64)
    assert (v.index_n_heads, v.index_head_dim, v.index_topk, v.activated_params) == (64, 128, 2048, 37.0)
    assert "config_671B_v3.2.json" in v.source


def test_models_are_listed_by_name_and_frozen():
    assert MODELS == {"DeepSeek-V3.2": DEEPSEEK_V32, "DeepSeek-V4-Flash": DEEPSEEK_V4_FLASH,
                      "DeepSeek-V4-Pro": DEEPSEEK_V4_PRO}
    assert isinstance(DEEPSEEK_V32, DSAModel) and isinstance(DEEPSEEK_V4_PRO, V4Model)
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEEPSEEK_V4_PRO.window = 64


def test_count_of_a_small_custom_model():
    m = V4Model("t", (0, 4, 16, 4), n_heads=2, head_dim=8, rope_dim=2, window=3, csa_rate=4, hca_rate=16,
                index_n_heads=1, index_head_dim=4, index_topk=5, activated_params=1.0)
    assert (m.n_layers, m.count("sliding"), m.count("csa"), m.count("hca")) == (4, 1, 2, 1)


def test_count_of_an_unknown_kind_names_the_parameter():
    from course_lib.configs_v4 import DEEPSEEK_V4_FLASH
    with pytest.raises(ValueError, match="kind must be one of"):
        DEEPSEEK_V4_FLASH.count("dense")
