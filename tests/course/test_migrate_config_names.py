"""tools/migrate_config_names.py and ModelConfig.from_dict: configs stored with the course's older field names still
build the same model, and the repository's stored configs use the new names."""
import json
from dataclasses import asdict

import pytest
import torch

from course_lib import asset_path
from course_lib.model import OLD_CONFIG_NAMES, ModelConfig, TinyLM, rename_old_config_names
from tools import migrate_config_names as migrate

OLD_STYLE = {"vocab_size": 17, "d_model": 32, "n_layers": 2, "n_heads": 4, "max_seq_len": 48, "ffn": "moe",
             "moe": {"n_routed_experts": 4, "num_experts_per_tok": 2}, "n_dense_layers": 1, "attention": "mla",
             "mla": {"kv_lora_rank": 8, "rope_interleaved": True, "norm_eps": 1e-6}, "ffn_hidden": 64,
             "rope_base": 5000.0}
NEW_STYLE = {"vocab_size": 17, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
             "max_position_embeddings": 48, "ffn": "moe", "moe": {"n_routed_experts": 4, "num_experts_per_tok": 2},
             "first_k_dense_replace": 1, "attention": "mla",
             "mla": {"kv_lora_rank": 8, "rope_interleave": True, "rms_norm_eps": 1e-6}, "intermediate_size": 64,
             "rope_theta": 5000.0}


def test_the_map_renames_every_old_name_in_order_and_is_idempotent():
    new = rename_old_config_names(OLD_STYLE)
    assert new == NEW_STYLE and list(new) == list(NEW_STYLE) and list(new["mla"]) == list(NEW_STYLE["mla"])
    assert rename_old_config_names(new) == new
    assert OLD_STYLE["d_model"] == 32                                  # the input is left as it was


def test_a_config_with_both_names_and_different_values_is_rejected():
    with pytest.raises(ValueError, match="'d_model' and 'hidden_size'"):
        rename_old_config_names({"hidden_size": 32, "d_model": 64})
    assert rename_old_config_names({"hidden_size": 32, "d_model": 32}) == {"hidden_size": 32}


def test_an_old_style_saved_model_loads_into_the_same_weights():
    torch.manual_seed(0)
    model = TinyLM(ModelConfig(**NEW_STYLE))
    saved = {"state": model.state_dict(), "config": OLD_STYLE}           # what an older course version wrote
    loaded = TinyLM(ModelConfig.from_dict(saved["config"]))
    assert asdict(loaded.cfg) == asdict(model.cfg)
    assert list(loaded.state_dict()) == list(saved["state"])            # the weights' names did not change
    loaded.load_state_dict(saved["state"], strict=True)
    x = torch.randint(0, 17, (2, 9))
    assert torch.equal(loaded(x).logits, model(x).logits)
    with pytest.raises(TypeError):
        ModelConfig(**OLD_STYLE)                                          # only from_dict reads the old names


@pytest.mark.parametrize("indent", [None, 2])
def test_the_tool_rewrites_a_file_keeping_its_format(tmp_path, indent):
    path = tmp_path / "run.json"
    record = {"config": OLD_STYLE, "loss": [5.5, 4.25], "note": "混合专家"}
    path.write_text(json.dumps(record, indent=indent) + "\n", encoding="utf-8")
    assert migrate.main(["--check", str(path)]) == 1                      # --check reports and changes nothing
    assert json.loads(path.read_text(encoding="utf-8"))["config"] == OLD_STYLE
    assert sorted(migrate.migrate_file(path)) == sorted(OLD_CONFIG_NAMES)
    want = json.dumps(dict(record, config=NEW_STYLE), indent=indent) + "\n"
    assert path.read_text(encoding="utf-8") == want
    assert migrate.migrate_file(path) == [] and path.read_text(encoding="utf-8") == want    # idempotent
    assert migrate.main(["--check", str(path)]) == 0
    TinyLM(ModelConfig(**json.loads(want)["config"]))
    with pytest.raises(ValueError, match="path"):
        migrate.migrate_file(tmp_path / "model.pt")


@pytest.mark.parametrize("group,name", [("grpo", "base.json"), ("mtp", "mtp_tiny.json"), ("v4", "mhc_runs.json"),
                                        ("v4", "hash_runs.json"), ("v4", "muon_runs.json")])
def test_the_stored_configs_use_the_new_names(group, name):
    assert migrate.old_names_in(json.loads(asset_path(group, name).read_text(encoding="utf-8"))) == []
