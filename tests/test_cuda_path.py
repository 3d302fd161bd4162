"""The notebooks' models and training steps on a device that is not the CPU, checked on a CPU-only machine.

A tensor that course_lib makes on the CPU (a bare ``torch.zeros(...)``/``torch.arange(...)`` inside forward, a loss,
generation, a cache or an optimizer) works on a CPU-only machine and fails on a GPU ("Expected all tensors to be on
the same device"). PyTorch's fake tensors catch that without a GPU: under ``FakeTensorMode`` every tensor carries a
device but no data, and an operation that mixes two devices raises ``FakeTensorDeviceMismatchError`` (as CUDA would;
0-dim CPU tensors may mix, as in CUDA's elementwise ops; ``torch.cat``/``torch.stack`` and embedding lookups are made as strict as
CUDA's).

The parameters and inputs live on fake ``meta`` tensors, not fake ``cuda`` ones: on a PyTorch built without CUDA,
Python indexing (``t[1:3]``), ``.to("cuda")`` and autograd of a fake cuda tensor ask for the CUDA device guard and
fail with "PyTorch is not linked with support for cuda devices" (``test_fake_cuda_mixing_raises`` shows what does
work). The device check that raises is the same for any device other than the CPU, so meta stands in for cuda.

Fake tensors have no values: ``.item()``, ``float(t)``, ``bool(t)`` and ``.tolist()`` return placeholders (0.5 for
floats, 1 for integers, False for booleans) and ``torch.bincount`` gives ``minlength`` bins (as even as
possible in ``.tolist()``), so loops run and
input checks pass; the numbers are checked elsewhere.
"""
from __future__ import annotations

import contextlib

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

try:
    from torch._subclasses.fake_tensor import FakeTensorDeviceMismatchError
except ImportError:   # torch before 2.12 (2.11 is preinstalled on some GPU images) raises a plain RuntimeError
    FakeTensorDeviceMismatchError = RuntimeError
MISMATCH = "same device|two different devices"     # the message of torch >= 2.12 | of older torch

DEV = torch.device("meta")


def _value(t):
    if t.dtype == torch.bool:
        return False
    return 0.5 if t.is_floating_point() else 1


def _tolist(t):
    if getattr(t, "fake_values", None) is not None:
        return list(t.fake_values)
    if t.dim() == 0:
        return _value(t)
    return [_tolist(t.select(0, 0)) for _ in range(t.shape[0])]


def _bincount(input, weights=None, minlength=0):
    # the output length depends on the values (max + 1); fake tensors have none, so: minlength bins, same device
    n = max(int(minlength), 1)
    out = input.new_zeros(n, dtype=torch.long if weights is None else weights.dtype)
    if weights is not None:
        return out + weights.sum() * 0
    # counts that add up to the number of inputs, for .tolist() (an MoE splits its sorted rows by them)
    out.fake_values = [input.numel() // n + (i < input.numel() % n) for i in range(n)]
    return out


class _Generator(torch.Generator):
    """meta has no random generator (cuda has): a CPU one stands in; the sampled values are placeholders anyway."""

    def __new__(cls, device="cpu"):
        return torch._C.Generator.__new__(cls, "cpu" if torch.device(device).type == "meta" else device)


def to_dev(model):
    """Module.to(DEV) for a model built outside the mode: Module.to would swap each parameter for its fake copy,
    which PyTorch refuses for tied weights (weakrefs); this keeps one fake Parameter per real one."""
    memo = {}
    for m in model.modules():
        for table in (m._parameters, m._buffers):
            for k, t in table.items():
                if t is not None:
                    if id(t) not in memo:
                        moved = t.detach().to(DEV)
                        memo[id(t)] = torch.nn.Parameter(moved, t.requires_grad) if table is m._parameters else moved
                    table[k] = memo[id(t)]
    return model


def _one_device(fn):
    # Fake tensors let a 0-dim CPU tensor join any device, as elementwise CUDA ops do; CUDA's cat and stack refuse it
    # ("Expected all tensors to be on the same device ... wrapper_CUDA_cat"), so these two check every input.
    def checked(tensors, *args, **kwargs):
        devices = {str(t.device) for t in tensors}
        if len(devices) > 1:
            raise RuntimeError(f"Expected all tensors to be on the same device, got {sorted(devices)} in {fn.__name__}")
        return fn(tensors, *args, **kwargs)
    return checked


_embedding = torch.nn.functional.embedding


def _strict_embedding(input, weight, *args, **kwargs):
    # the same for a lookup: fake tensors accept CPU token ids for a table elsewhere, CUDA's index_select does not
    if input.device != weight.device:
        raise RuntimeError(f"Expected all tensors to be on the same device, got ids on {input.device} and the "
                           f"embedding on {weight.device}")
    return _embedding(input, weight, *args, **kwargs)


_module_to = torch.nn.Module.to


def _to(self, *args, **kwargs):
    device = torch._C._nn._parse_to(*args, **kwargs)[0]
    return to_dev(self) if device is not None and device.type == "meta" else _module_to(self, *args, **kwargs)


@contextlib.contextmanager
def off_cpu(monkeypatch):
    """Fake mode with placeholder values for the scalar reads (see the module docstring)."""
    monkeypatch.setattr(FakeTensor, "item", _value, raising=False)
    monkeypatch.setattr(FakeTensor, "tolist", _tolist, raising=False)
    monkeypatch.setattr(FakeTensor, "__bool__", lambda t: bool(_value(t)), raising=False)
    monkeypatch.setattr(FakeTensor, "__float__", lambda t: float(_value(t)), raising=False)
    monkeypatch.setattr(FakeTensor, "__int__", lambda t: int(_value(t)), raising=False)
    monkeypatch.setattr(FakeTensor, "__index__", lambda t: int(_value(t)), raising=False)
    monkeypatch.setattr(torch, "bincount", _bincount)
    monkeypatch.setattr(torch, "cat", _one_device(torch.cat))
    monkeypatch.setattr(torch, "stack", _one_device(torch.stack))
    monkeypatch.setattr(torch.nn.functional, "embedding", _strict_embedding)
    monkeypatch.setattr(torch, "Generator", _Generator)
    monkeypatch.setattr(torch.nn.Module, "to", _to)             # what course_lib's own .to(device) calls do
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        yield mode


def _params_on(model):
    devices = {p.device for p in model.parameters()} | {b.device for b in model.buffers()}
    assert devices == {DEV}, devices
    return model


def _ids(vocab, B=2, T=16):
    return torch.randint(0, vocab, (B, T), device=DEV)


def _step(model, loss, opt=None):
    """backward and one optimizer step (AdamW unless given); every gradient lands on the parameters' device."""
    loss.backward()
    assert {p.grad.device for p in model.parameters() if p.grad is not None} == {DEV}
    (opt or torch.optim.AdamW(model.parameters(), lr=1e-3)).step()


# ----------------------------------------------------------------------------------------------------------- harness
def test_fake_cuda_mixing_raises(monkeypatch):
    """The check these tests rely on: mixing the CPU with another device raises, on fake cuda and on fake meta."""
    with off_cpu(monkeypatch):
        for dev in (torch.device("cuda", 0), DEV):
            x = torch.zeros(3, device=dev)
            with pytest.raises(RuntimeError, match="same device"):
                torch.cat([x, torch.zeros(3)])
            with pytest.raises(RuntimeError, match="same device"):
                torch.stack([x.sum(), torch.zeros(())])          # CUDA's stack refuses a 0-dim CPU tensor too
            with pytest.raises(RuntimeError, match="same device"):
                torch.nn.functional.embedding(torch.tensor([[1, 2]]), torch.zeros(4, 3, device=dev))
            with pytest.raises(FakeTensorDeviceMismatchError, match=MISMATCH):
                x + torch.ones(3)


def test_harness_catches_a_cpu_tensor_inside_forward(monkeypatch):
    class Bad(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(4))

        def forward(self, x):
            return x * self.w + torch.arange(4)          # the bug: arange on the CPU

    m = Bad()                       # modules are built outside the mode and moved inside it
    with off_cpu(monkeypatch):
        m = m.to(DEV)
        with pytest.raises(FakeTensorDeviceMismatchError, match=MISMATCH):
            m(torch.ones(2, 4, device=DEV))


# ----------------------------------------------------------------------------------------------------- 02-04: TinyLM
def test_tinylm_moe_train_step_and_generation(monkeypatch):
    from course_lib.model import ModelConfig, TinyLM, generate
    from course_lib.moe import update_biases
    from course_lib.kit.train_loop import train_lm

    models = [TinyLM(ModelConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                 max_position_embeddings=32, **extra))
              for extra in ({}, dict(ffn="moe", moe=dict(n_routed_experts=4, num_experts_per_tok=2,
                                                         bias_update_speed=1e-3)))]
    with off_cpu(monkeypatch):
        for model in models:
            model = _params_on(to_dev(model))
            x = _ids(64)
            train_lm(model, lambda s: (x, x), 2, progress=False)
            out = generate(model, x[:1, :4], 3, temperature=0)
            assert out.device == DEV and out.shape == (1, 7)
            update_biases(model)


def test_mla_and_mtp_speculative_decoding(monkeypatch):
    from course_lib.mla import GQA, MLA
    from course_lib.model import ModelConfig, TinyLM
    from course_lib.mtp import MTPModel, speculative_generate, speculative_sample, train_mtp

    blocks = [MLA(32, 4, kv_lora_rank=16, q_lora_rank=16), GQA(32, 4, 2)]
    lm = TinyLM(ModelConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            max_position_embeddings=64, attention="mla",
                            mla=dict(kv_lora_rank=16)))
    mtp = MTPModel(lm, depth=1)
    with off_cpu(monkeypatch):
        for att in blocks:
            att = to_dev(att)
            x = torch.randn(2, 8, 32, device=DEV)
            cache = {}
            att(x, cache=cache)                                    # prefill, then one cached decode step
            y = att(x[:, -1:], cache=cache, start_pos=8)
            _step(att, y.float().pow(2).mean())
        mtp = _params_on(to_dev(mtp))
        x = _ids(64)
        train_mtp(mtp, lambda s: (x, x), 2, progress=False)
        out, _ = speculative_generate(mtp, x[:1, :4], 4)
        assert out.device == DEV
        out = speculative_sample(mtp, x[:1, :4], 4, generator=torch.Generator(device=DEV).manual_seed(0))
        assert (out[0] if isinstance(out, tuple) else out).device == DEV


def test_dsa_and_v4_attention_with_caches(monkeypatch):
    from course_lib.dsa import DSA
    from course_lib.toys.needle import accuracy_and_recall, make_needle_model, train_dense, warmup_indexer
    from course_lib.v4_attention import Compressor, V4Attention, V4Cache

    dsa = DSA(64, 4, index_topk=8, q_lora_rank=32)
    comps = [Compressor(32, 16, 4, True, 4), Compressor(32, 16, 8, False, 4)]
    v4 = {kind: V4Attention(64, 4, head_dim=32, rope_dim=8, window=16, kind=kind, q_lora_rank=32)
          for kind in ("csa", "hca", "sliding")}
    needle = make_needle_model()
    with off_cpu(monkeypatch):
        dsa = to_dev(dsa)
        x = torch.randn(2, 24, 64, device=DEV)
        cache = {}
        dsa(x, cache=cache)
        _step(dsa, dsa(x[:, -1:], cache=cache, start_pos=24).pow(2).mean())
        for comp in comps:
            comp = to_dev(comp)
            out = comp(torch.randn(2, 24, 32, device=DEV))
            assert (out[0] if isinstance(out, tuple) else out).device == DEV
        for kind, att in v4.items():
            att = to_dev(att)
            y = att(x)
            _step(att, y.pow(2).mean())
            cache = V4Cache()
            att(x[:, :20], cache=cache)
            for t in range(20, 24):                                # decode past a compression boundary
                assert att(x[:, t:t + 1], cache=cache, start_pos=t).device == DEV, kind
        needle = _params_on(to_dev(needle))
        train_dense(needle, 1, 32, batch=2)                        # the needle batches follow the model's device
        warmup_indexer(needle, 1, 32, batch=2)
        accuracy_and_recall(needle, 32, [4], batch=2)


# ---------------------------------------------------------------------------------------- 05-06: GRPO, distillation
def _pipeline_models():
    from course_lib.toys import r1_recipe
    from course_lib.model import TinyLM

    tok = r1_recipe.make_tokenizer()
    return tok, TinyLM(r1_recipe.student_config(tok.vocab_size)), TinyLM(r1_recipe.teacher_config(tok.vocab_size))


def test_grpo_and_on_policy_distillation(monkeypatch):
    from course_lib import distill, grpo
    from course_lib.toys import r1_recipe

    tok, student, teacher = _pipeline_models()
    with off_cpu(monkeypatch):
        student, teacher = to_dev(student), to_dev(teacher)
        cfg = grpo.GRPOConfig(steps=1, prompts_per_step=2, group_size=2, max_new_tokens=4, beta=0.04, eval_every=1)
        grpo.grpo_train(student, tok, r1_recipe.sample_prompts(), r1_recipe.reward_fns("accuracy", "format"), cfg,
                        eos_id=r1_recipe.eos_id(tok), progress=False)
        distill.on_policy_distill(student, teacher, tok, r1_recipe.sample_prompts(general_share=0.25), 1,
                                  prompts_per_step=2, group_size=2, max_new_tokens=4, eos_id=r1_recipe.eos_id(tok),
                                  progress=False)
        s, t = torch.randn(2, 5, 11, device=DEV), torch.randn(2, 5, 11, device=DEV)
        assert distill.kd_loss(s, t).device == DEV and distill.reverse_kl(s, t).device == DEV
        logp = torch.randn(4, 6, device=DEV)
        loss = grpo.grpo_loss(logp, logp, torch.randn(4, device=DEV), torch.ones(4, 6, dtype=torch.bool, device=DEV))
        assert all(v.device == DEV for v in (loss if isinstance(loss, tuple) else (loss,)) if torch.is_tensor(v))


# ------------------------------------------------------------------------------- 08: mHC, Muon, hash routing, Engram
def test_mhc_stream_lm_train(monkeypatch):
    from course_lib import mhc

    models = [mhc.StreamLM(64, 16, 2, 2, residual, 4, max_seq_len=32) for residual in mhc.RESIDUALS]
    hc = mhc.HyperConnection(d_model=8, n_streams=4, sinkhorn_iters=5)
    with off_cpu(monkeypatch):
        for model in models:
            model = _params_on(to_dev(model))
            x = _ids(64)
            mhc.train(model, lambda s: (x, x), 2, progress=False)
            mixes = mhc.mixing_matrices(model)
            if mixes:
                gains = mhc.composite_gains(mixes)
                assert all(g.device == DEV for g in gains)
        hc = to_dev(hc)
        out = hc(torch.randn(2, 3, 4, 8, device=DEV))
        assert all(o.device == DEV for o in (out if isinstance(out, tuple) else (out,)) if torch.is_tensor(o))


def test_muon_optimizer_step(monkeypatch):
    from course_lib import muon
    from course_lib.model import ModelConfig, TinyLM
    from course_lib.kit.train_loop import train_lm

    model = TinyLM(ModelConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               max_position_embeddings=32))
    with off_cpu(monkeypatch):
        model = to_dev(model)
        opt = muon.MuonAdamW.for_model(model, lr=1e-3, weight_decay=0.1)
        x = _ids(64)
        train_lm(model, lambda s: (x, x), 2, optimizer=opt, progress=False)
        assert muon.newton_schulz(torch.randn(8, 4, device=DEV), "v4").device == DEV
        assert muon.ns_polynomial(torch.linspace(0, 1, 5, device=DEV), "v4").device == DEV


def test_hash_routing_on_a_moved_model(monkeypatch):
    """08 moves the TinyLM to the device first, then swaps in hash-routed layers."""
    from course_lib import hash_routing
    from course_lib.model import ModelConfig, TinyLM
    from course_lib.moe import max_violation
    from course_lib.kit.train_loop import train_lm

    table = hash_routing.hash_table(64, 4, 2, seed=0)
    base = TinyLM(ModelConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                              max_position_embeddings=32, ffn="moe",
                              moe=dict(n_routed_experts=4, num_experts_per_tok=2)))
    with off_cpu(monkeypatch):
        base = to_dev(base)
        model = hash_routing.use_hash_routing(base, 1, table=table, n_routed_experts=4, num_experts_per_tok=2)
        _params_on(model)
        x = _ids(64)
        hist = train_lm(model, lambda s: (x, x), 2, progress=False,
                        callback=lambda step, m: {"maxvio": [max_violation(layer.last_load)
                                                             for layer in model.hash_layers]})
        assert len(hist["loss"]) == 2


def test_engram_lm_train_and_scores(monkeypatch):
    from course_lib import engram
    from course_lib.toys.corpus import Corpus
    from course_lib.model import ModelConfig

    cfg = ModelConfig(vocab_size=256, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      max_position_embeddings=64)
    kw = dict(table_size=263, max_ngram=3, n_heads=2, d_mem=16)
    base, with_mem = engram.EngramLM(cfg, engram_layers=(), **kw), engram.EngramLM(cfg, engram_layers=(0,), **kw)
    corpus = Corpus()
    with off_cpu(monkeypatch):
        for model in (base, with_mem):
            model = _params_on(to_dev(model))
            engram.train_on_corpus(model, corpus, 2, batch_size=2, seq_len=16, table_lr_mult=5.0, progress=False)
            x = _ids(256)
            assert engram.per_token_loss(model, x, x).device == DEV
        assert engram.flops_per_token(base, 16) > 0


# ---------------------------------------------------------------------------------------- 09-10: nano-DeepSeek, V4
def test_nano_deepseek_and_nano_v4_train_step(monkeypatch):
    from course_lib import nano
    from course_lib.nano import v4 as nano_v4
    from course_lib.mtp import MTPModel, speculative_generate
    from course_lib.nano.train_parts import make_optimizer, train_step, validation_loss

    # 09's dense baselines are TinyLMs, covered above; its recorded checkpoints load as these same classes
    models = [nano.build_model(nano.TINY), nano_v4.build_model(nano_v4.TINY_V4)]
    with off_cpu(monkeypatch):
        for model in models:
            model = to_dev(model)
            x = _ids(256)
            opt = make_optimizer(model, 1e-3)
            lam = 0.3 if isinstance(model, MTPModel) else None
            train_step(model, opt, x, x, 1e-3, lam)
            assert validation_loss(model, lambda i: (x, x), 1) == 0.5           # the placeholder value: it ran
            if isinstance(model, MTPModel):
                out, _ = speculative_generate(model, x[:1, :8], 4)
                assert out.device == DEV


# ------------------------------------------------------------------------------- older preinstalled transformers
def test_ref_minimum_is_the_ref_extra():
    import re
    from pathlib import Path

    from course_lib.kit.versions import MIN_TRANSFORMERS

    text = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text()
    assert re.search(r'^ref = \[[^\]]*"transformers>=([\d.]+)"', text, re.M).group(1) == MIN_TRANSFORMERS


def test_an_older_transformers_gives_a_skip_reason_naming_both_versions(monkeypatch):
    transformers = pytest.importorskip("transformers")
    from course_lib.kit.versions import transformers_problem

    monkeypatch.setattr(transformers, "__version__", "5.17.0")
    assert transformers_problem("5.24") == "needs transformers >= 5.24 (found 5.17.0)"
    for ok in ("5.24.0", "5.24.0.dev0", "5.30.1", "6.0"):
        monkeypatch.setattr(transformers, "__version__", ok)
        assert transformers_problem("5.24") is None, ok
    monkeypatch.setattr(transformers, "__version__", "4.57.1")
    assert transformers_problem("5.24") == "needs transformers >= 5.24 (found 4.57.1)"
    with pytest.raises(ValueError, match="minimum"):
        transformers_problem("latest")


def test_reference_tests_skip_on_an_older_transformers(monkeypatch):
    """The four reference modules skip at import with the reason, instead of comparing against other numbers."""
    import importlib.util
    import sys
    from pathlib import Path

    transformers = pytest.importorskip("transformers")
    monkeypatch.setattr(transformers, "__version__", "5.17.0")
    here = Path(__file__).resolve().parent / "reference"
    for name in ("test_mla_reference", "test_dsa_reference", "test_v4_attention_reference", "test_moe_reference"):
        spec = importlib.util.spec_from_file_location(f"_old_tf_{name}", here / f"{name}.py")
        with pytest.raises(pytest.skip.Exception, match=r"needs transformers >= 5\.24 \(found 5\.17\.0\)"):
            spec.loader.exec_module(importlib.util.module_from_spec(spec))
        sys.modules.pop(f"_old_tf_{name}", None)


def test_nano_analysis_decoding_follows_the_model(monkeypatch):
    """09's speculative decoding table and samples, on a model that is not on the CPU."""
    from course_lib import nano
    from course_lib.figures import nano_analysis
    from course_lib.toys.corpus import Corpus

    model, corpus = nano.build_model(nano.TINY), Corpus()
    with off_cpu(monkeypatch):
        model = to_dev(model)
        prompts = nano_analysis.domain_prompts(corpus, "python", 1, 8, device=DEV)
        assert prompts[0].device == DEV
        nano_analysis.sample_text(model, "def f", new=3, temperature=0.5)


def test_moe_analysis_byte_classes_on_the_ids_device(monkeypatch):
    # mutual_information is not run here: it selects the non-zero cells with a boolean mask, an output whose shape
    # depends on the values, which fake tensors cannot compute (it counts on its labels' device, see the module)
    from course_lib.figures.moe_analysis import byte_classes

    with off_cpu(monkeypatch):
        assert byte_classes(torch.randint(0, 256, (64,), device=DEV)).device == DEV


def test_expert_parallel_layer_in_one_process(monkeypatch):
    """10's ExpertParallelMoE on one rank (its all-to-alls are then the identity): dispatch, local experts and
    combine, forward and backward, and the dispatch formula, on a layer that is not on the CPU. `nonzero` has an
    output whose shape depends on the values: here it returns every row, a placeholder like the others."""
    from course_lib import expert_parallel
    from course_lib.moe import MoE

    def every_row(t, as_tuple=False):
        rows = torch.arange(t.shape[0], device=t.device)
        if t.dim() == 1:
            return (rows,) if as_tuple else rows.unsqueeze(1)
        cols = torch.arange(t.shape[1], device=t.device)
        r, c = rows.repeat_interleave(t.shape[1]), cols.repeat(t.shape[0])
        return (r, c) if as_tuple else torch.stack([r, c], 1)

    full = MoE(d_model=16, n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2, moe_intermediate_size=8)
    layer = expert_parallel.ExpertParallelMoE(full, rank=0, world=1)
    monkeypatch.setattr(expert_parallel, "exchange_counts", lambda counts, group=None: counts.clone())
    monkeypatch.setattr(expert_parallel.ExpertParallelMoE, "_a2a", lambda self, t, recv, send, grad: t)
    with off_cpu(monkeypatch):
        monkeypatch.setattr(FakeTensor, "nonzero", every_row, raising=False)
        layer = _params_on(to_dev(layer))
        x = torch.randn(2, 5, 16, device=DEV, requires_grad=True)
        y = layer(x)
        assert y.device == DEV and y.shape == x.shape
        y.square().mean().backward()
        assert x.grad.device == DEV
        assert expert_parallel.dispatch_rows(torch.randint(0, 8, (5, 2), device=DEV), 8, 2).device == DEV
