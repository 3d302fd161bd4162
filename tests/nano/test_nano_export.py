"""nano-DeepSeek exported to transformers' DeepseekV3ForCausalLM and read back (course_lib.nano.export).

transformers is the reference: the same weights, loaded through from_pretrained, must give the same logits and the
same greedy text; the MTP layer (which transformers skips) must come back bit for bit.
"""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from course_lib import nano
from course_lib.nano import export as nano_export
from course_lib.toys.corpus import Corpus
from course_lib.model import generate

torch.set_num_threads(2)
CFG = nano.TINY.replace(max_position_embeddings=256)


def make_model(cfg=CFG, seed=0, scale=3.0):
    """A built nano model with spread-out random weights (so logits and greedy choices are decisive), random norm
    weights and a non-zero aux-loss-free bias (so every tensor matters)."""
    torch.manual_seed(seed)
    model = nano.build_model(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(scale)
            else:
                p.copy_(1 + 0.2 * torch.randn_like(p))
        for name, buf in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buf.copy_(0.05 * torch.randn_like(buf))
    return model


def hf_model_class():
    """transformers' DeepseekV3ForCausalLM; only the tests that load the files with transformers ask for it, so only
    they are skipped where transformers is missing (writing and reading back needs only safetensors)."""
    return pytest.importorskip("transformers").DeepseekV3ForCausalLM


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    model = make_model()
    return model, nano_export.to_transformers(model, tmp_path_factory.mktemp("nano"), CFG)


@pytest.fixture(scope="module")
def exported(written):
    model, directory = written
    ref, info = hf_model_class().from_pretrained(directory, output_loading_info=True)
    return model, directory, ref.eval(), info


def corpus_batch(n=2, T=48):
    corpus = Corpus(max_chars=20_000)
    x, _ = corpus.get_batch("val", n, T, generator=torch.Generator().manual_seed(0))
    return x


def test_transformers_loads_every_main_weight(exported):
    model, directory, ref, info = exported
    L = CFG.num_hidden_layers
    assert not info["missing_keys"] and not info["mismatched_keys"]
    # only the MTP layer (stored as decoder layer L, like V3's layer 61) is left out by transformers
    assert info["unexpected_keys"] and all(k.startswith(f"model.layers.{L}.") for k in info["unexpected_keys"])
    cfg = json.loads((directory / "config.json").read_text())
    assert cfg["model_type"] == "deepseek_v3" and cfg["num_nextn_predict_layers"] == 1


@pytest.mark.parametrize("inputs", ["random", "corpus"])
def test_logits_equal_transformers(exported, inputs):
    model, _, ref, _ = exported
    x = torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(1)) if inputs == "random" \
        else corpus_batch()
    with torch.no_grad():
        ours, theirs = model.model(x).logits, ref(x).logits
    assert theirs.abs().max() > 1.0                                  # the comparison is not between near-zeros
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=1e-5), (ours - theirs).abs().max()


def test_comparison_can_fail(exported):
    model, _, ref, _ = exported
    x = corpus_batch(1, 24)
    with torch.no_grad():
        lm = model.model
        saved = lm.blocks[1].ffn.e_score_correction_bias.clone()
        lm.blocks[1].ffn.e_score_correction_bias.add_(1.0 * torch.arange(8.0))   # other experts get picked
        try:
            assert not torch.allclose(lm(x).logits, ref(x).logits, atol=1e-5, rtol=1e-5)
        finally:
            lm.blocks[1].ffn.e_score_correction_bias.copy_(saved)


def test_greedy_generation_identical(exported):
    model, _, ref, _ = exported
    prompt = corpus_batch(1, 16)
    ours = generate(model.model, prompt, 64, temperature=0)          # absorbed-MLA cache
    theirs = ref.generate(prompt, max_new_tokens=64, do_sample=False, attention_mask=torch.ones_like(prompt))
    assert ours.shape == (1, 80) and torch.equal(ours, theirs)


def test_round_trip_bit_for_bit_with_mtp(written):
    model, directory = written
    back = nano_export.from_transformers(directory)
    a, b = model.state_dict(), back.state_dict()
    assert set(a) == set(b) and any(k.startswith("mtp.0.block") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert back.nano_config == CFG
    x = corpus_batch(1, 32)
    with torch.no_grad():
        assert all(torch.equal(p, q) for p, q in zip(model(x).mtp_logits, back(x).mtp_logits))


def test_mtp_layer_follows_the_release_layout(written):
    """Recompute the MTP module's input projection from the FILE with the release's convention
    h' = eh_proj [enorm(Emb(t)); hnorm(h)] and compare with the course module (paper order [h; Emb])."""
    model, directory = written
    t = load_file(str(directory / "model.safetensors"))
    p = f"model.layers.{CFG.num_hidden_layers}"
    assert torch.equal(t[f"{p}.embed_tokens.weight"], t["model.embed_tokens.weight"])
    assert torch.equal(t[f"{p}.shared_head.head.weight"], t["lm_head.weight"])

    def rms(v, w):
        return v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + 1e-6) * w

    h, tok = torch.randn(1, 5, CFG.hidden_size), torch.randint(0, 256, (1, 5))
    emb = t["model.embed_tokens.weight"][tok]
    want = torch.cat([rms(emb, t[f"{p}.enorm.weight"]), rms(h, t[f"{p}.hnorm.weight"])], -1) @ t[f"{p}.eh_proj.weight"].T
    m = model.mtp[0]
    with torch.no_grad():
        got = m.proj(torch.cat([m.hnorm(h), m.enorm(m.embed(tok))], -1))
    assert torch.allclose(got, want, atol=1e-5)


def test_other_rope_layout_gives_same_logits(exported, tmp_path):
    """An interleaved model written in the half (rotate_half) layout: transformers runs it with rope_interleave=False
    and must agree; reading it back and writing it interleaved again restores the original tensors exactly."""
    model, _, _, _ = exported
    d = nano_export.to_transformers(model, tmp_path / "half", CFG, rope_interleave=False)
    assert json.loads((d / "config.json").read_text())["rope_interleave"] is False
    ref = hf_model_class().from_pretrained(d).eval()
    x = corpus_batch()
    with torch.no_grad():
        assert torch.allclose(model.model(x).logits, ref(x).logits, atol=1e-5, rtol=1e-5)
    back = nano_export.from_transformers(d)
    assert back.model.blocks[0].attn.rope_interleave is False
    again = nano_export.state_for_export(back, rope_interleave=True)
    orig = nano_export.state_for_export(model)
    assert all(torch.equal(again[k], orig[k]) for k in orig)
    # the permutation really moved rows (else this test would prove nothing)
    half = load_file(str(d / "model.safetensors"))
    assert not torch.equal(half["model.layers.0.self_attn.kv_a_proj_with_mqa.weight"],
                           orig["model.layers.0.self_attn.kv_a_proj_with_mqa.weight"])


def test_model_built_in_half_layout_matches_transformers(tmp_path):
    cfg = CFG.replace(rope_interleave=False, q_lora_rank=None)
    model = make_model(cfg, seed=2)
    ref = hf_model_class().from_pretrained(nano_export.to_transformers(model, tmp_path, cfg)).eval()
    x = corpus_batch()
    with torch.no_grad():
        assert torch.allclose(model.model(x).logits, ref(x).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("damage", ["missing", "shape", "extra"])
def test_broken_checkpoint_names_the_tensor(written, tmp_path, damage):
    model, directory = written
    t = load_file(str(directory / "model.safetensors"))
    name = "model.layers.2.mlp.experts.5.up_proj.weight"
    if damage == "missing":
        del t[name]
    elif damage == "shape":
        t[name] = t[name][:-1].contiguous()
    else:
        t["model.layers.9.foo.weight"] = torch.zeros(2)
        name = "model.layers.9.foo.weight"
    (tmp_path / "config.json").write_text((directory / "config.json").read_text())
    save_file(t, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=name.replace(".", r"\.")) as err:
        nano_export.from_transformers(tmp_path)
    assert "\n" not in str(err.value)


def test_mha_model_cannot_be_exported(tmp_path):
    cfg = CFG.replace(attention="mha")
    with pytest.raises(ValueError, match="attention"):
        nano_export.to_transformers(nano.build_model(cfg), tmp_path, cfg)


def test_bench_v3_runs_and_compares_the_same_function():
    """Smoke test of `python -m course_lib.bench v3` at toy sizes (no timing is asserted)."""
    pytest.importorskip("transformers")
    from course_lib.bench import v3

    r = v3.run(batch=1, seq_len=8, prompt=8, new=4, repeat=1)
    assert r["same_tokens"] and r["logit_diff"] < 1e-4
    assert set(r["train"]) == set(r["decode"]) == {"course", "transformers"}
    with pytest.raises(ValueError, match="shape"):
        v3.build(16, shape="huge")
