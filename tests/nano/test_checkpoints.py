"""The shipped checkpoints still fit today's model code, key for key (no conversion was needed).

Replacing model.py's own attention by course_lib.layers.MHA kept every state-dict key (attn.qkv, attn.out; RoPE
tables are recomputed, never stored) and the shipped checkpoints are dense (their MoE layers' renamed shared-expert
keys do not occur), so the files load strictly as they are. If a future change renames a key, these tests fail and
the files must be converted by a tested script, not silently retrained.
"""
import json

import pytest
import torch

from course_lib import asset_path
from course_lib.model import ModelConfig, TinyLM


def _load(*parts):
    path = asset_path(*parts)
    if not path.exists():
        pytest.skip(f"{path.name} not built")
    return torch.load(path, map_location="cpu", weights_only=True)


def _assert_same_keys_and_shapes(model, state, skip=()):
    want = {k: v.shape for k, v in model.state_dict().items() if k not in skip}
    got = {k: v.shape for k, v in state.items()}
    assert sorted(got) == sorted(want)
    assert all(got[k] == want[k] for k in want)


def test_grpo_base_policy_loads_strictly():
    from course_lib.toys.arith import BASE_MODEL, make_tokenizer
    state = _load("grpo", "base.pt")
    model = TinyLM(ModelConfig(vocab_size=make_tokenizer().vocab_size, **BASE_MODEL))
    _assert_same_keys_and_shapes(model, state)
    model.load_state_dict(state, strict=True)


def test_distill_base_models_load_strictly():
    state = _load("distill", "base_models.pt")
    for key in ("teacher", "student"):
        model = TinyLM(ModelConfig.from_dict(state[f"{key}_config"]))
        _assert_same_keys_and_shapes(model, state[key])
        model.load_state_dict(state[key], strict=True)


def test_mtp_checkpoint_holds_every_key_but_the_shared_embedding_and_head():
    from course_lib.mtp import MTPModel
    state = _load("mtp", "mtp_tiny.pt")
    meta = json.loads(asset_path("mtp", "mtp_tiny.json").read_text())
    model = MTPModel(TinyLM(ModelConfig.from_dict(meta["config"])), depth=meta["mtp_depth"])
    # MTP modules share the main model's embedding and output head (V3 §2.2); the file stores them once.
    shared = {k for k in model.state_dict() if k.startswith("mtp.") and k.split(".")[2] in ("embed", "head")}
    assert shared
    _assert_same_keys_and_shapes(model, state, skip=shared)
    full = dict(model.state_dict())
    full.update({k: v.float() for k, v in state.items()})
    model.load_state_dict(full, strict=True)


@pytest.mark.parametrize("name,layers", [("nano_tiny", 3), ("nano_deep", 8)])
def test_nano_checkpoints_load_strictly_and_round_trip(name, layers):
    """notebook 10's trained nano-DeepSeeks (transformers' layout): from_transformers raises on a missing, unexpected
    or mis-shaped tensor; every tensor of the file comes back bit for bit when the model is written again."""
    pytest.importorskip("safetensors")
    from safetensors.torch import load_file

    from course_lib.nano import export as nano_export

    directory = asset_path("nano", name)
    if not (directory / "model.safetensors").exists():
        pytest.skip(f"{name} not built")
    model = nano_export.from_transformers(directory)
    assert model.model.cfg.num_hidden_layers == layers and len(model.mtp) == 1
    stored, again = load_file(str(directory / "model.safetensors")), nano_export.state_for_export(model)
    assert sorted(stored) == sorted(again)
    assert all(stored[k].dtype == torch.float32 and torch.equal(stored[k], again[k]) for k in stored)
