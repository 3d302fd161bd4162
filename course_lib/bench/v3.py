"""Benchmark: nano-DeepSeek (course_lib.nano) against transformers' DeepseekV3ForCausalLM holding the same weights.

    python -m course_lib.bench v3 [--batch 8] [--seq-len 256] [--prompt 1024] [--new 128] [--threads 1] [--repeat 3]
                                  [--shape tiny|wide]

Two measurements, each interleaved round by round (bench.core.compare) on the same weights and inputs:
  1. one training step: forward and backward of the next-token loss (main model, no MTP), batch x seq-len tokens;
  2. greedy decoding of `new` tokens after a `prompt`-token prompt: the course's ``generate`` (MLA cache of the
     latents, absorbed path for the one-token steps) against transformers' ``generate`` (its DynamicCache of the
     decompressed keys and values, default attention implementation).
The weights come from ``nano_export.to_transformers`` (the tested export), so both models compute the same function;
the script checks the logits agree before timing. The course's model was written to train at least as fast as
transformers' (ratio >= 1) and to decode at least 1.5x faster; the last line says whether it does on this machine
(wall time: it depends on the CPU and on what else runs). Threads default to 1 (a busy shared CPU makes 2-thread
timings noise).
"""
from __future__ import annotations

import argparse
import tempfile

import torch

from course_lib import nano
from course_lib.nano import export as nano_export
from course_lib.model import generate
from course_lib.bench.core import compare, print_table


# "wide": V3's head-size ratios at d = 512 (d_c = 4 d_h, d^R_h = d_h / 2), where the attention cache, not Python
# overhead, starts to dominate a decode step; still small enough for a laptop.
SHAPES = {"tiny": {}, "wide": dict(hidden_size=512, num_attention_heads=8, qk_nope_head_dim=64, qk_rope_head_dim=32,
                                   v_head_dim=64, kv_lora_rank=256, q_lora_rank=384, intermediate_size=1536,
                                   moe_intermediate_size=512)}


def build(max_len: int, seed: int = 0, shape: str = "tiny"):
    """The tiny preset (or the wide shape; long enough for the prompt) and transformers' model loaded from its export."""
    from transformers import DeepseekV3ForCausalLM

    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {sorted(SHAPES)}, got {shape!r}")
    cfg = nano.TINY.replace(max_position_embeddings=max_len, num_nextn_predict_layers=0, **SHAPES[shape])
    torch.manual_seed(seed)
    ours = nano.build_model(cfg)
    with torch.no_grad():                                    # spread the logits so greedy choices are decisive
        for p in ours.parameters():
            if p.dim() > 1:
                p.mul_(3.0)
    with tempfile.TemporaryDirectory() as d:
        nano_export.to_transformers(ours, d, cfg)
        ref = DeepseekV3ForCausalLM.from_pretrained(d)
    return cfg, ours, ref


def run(batch: int = 8, seq_len: int = 256, prompt: int = 1024, new: int = 128, repeat: int = 3,
        shape: str = "tiny") -> dict:
    cfg, ours, ref = build(prompt + new + 1, shape=shape)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, cfg.vocab_size, (batch, seq_len + 1), generator=g)
    inp, tgt = x[:, :-1], x[:, 1:]
    ours.eval(), ref.eval()
    with torch.no_grad():
        diff = (ours(inp).logits - ref(inp).logits).abs().max().item()
    if diff > 1e-4:
        raise RuntimeError(f"the two models disagree (max logit difference {diff:.2e}); not timing them")
    ours.train(), ref.train()

    def step_ours():
        ours.zero_grad(set_to_none=True)
        out = ours(inp, tgt)
        (out.loss + out.aux_loss).backward()

    def step_ref():
        ref.zero_grad(set_to_none=True)
        ref(inp, labels=x[:, :-1]).loss.backward()         # transformers shifts the labels itself

    train_t = compare({"course": step_ours, "transformers": step_ref}, repeat=repeat, warmup=1)
    ours.eval(), ref.eval()
    p = torch.randint(0, cfg.vocab_size, (1, prompt), generator=g)
    mask = torch.ones_like(p)
    a = generate(ours, p, new, temperature=0)
    b = ref.generate(p, attention_mask=mask, max_new_tokens=new, do_sample=False)
    same = torch.equal(a, b)
    decode_t = compare({"course": lambda: generate(ours, p, new, temperature=0),
                        "transformers": lambda: ref.generate(p, attention_mask=mask, max_new_tokens=new,
                                                             do_sample=False)},
                       repeat=repeat, warmup=1)
    return {"train": train_t, "decode": decode_t, "same_tokens": same, "logit_diff": diff,
            "shape": dict(batch=batch, seq_len=seq_len, prompt=prompt, new=new)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m course_lib.bench v3", description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--prompt", type=int, default=1024)
    p.add_argument("--new", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--shape", choices=sorted(SHAPES), default="tiny", help="tiny preset, or V3 head ratios at d=512")
    a = p.parse_args(argv)
    for name in ("batch", "seq_len", "prompt", "new", "threads", "repeat"):
        if getattr(a, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1")
    torch.set_num_threads(a.threads)
    r = run(a.batch, a.seq_len, a.prompt, a.new, a.repeat, a.shape)
    tr, de = r["train"], r["decode"]
    print(f"nano-DeepSeek ({a.shape} shape) vs transformers DeepseekV3ForCausalLM, same weights, float32, CPU, "
          f"{torch.get_num_threads()} thread(s); logits agree to {r['logit_diff']:.1e}")
    print_table([[f"train step (fwd+bwd, {a.batch}x{a.seq_len} tokens)", tr["course"] * 1e3, tr["transformers"] * 1e3,
                  tr["transformers"] / tr["course"]],
                 [f"greedy decode {a.new} tokens after {a.prompt}", de["course"] * 1e3, de["transformers"] * 1e3,
                  de["transformers"] / de["course"]]],
                ["measurement", "course ms", "transformers ms", "speed-up (x)"])
    print(f"decode tokens/s: course {a.new / de['course']:.0f}, transformers {a.new / de['transformers']:.0f}; "
          f"identical greedy tokens: {r['same_tokens']}")
    train_x, decode_x = tr["transformers"] / tr["course"], de["transformers"] / de["course"]
    print(f"on this machine: train step ratio {train_x:.2f}x >= 1: {'yes' if train_x >= 1 else 'no'}; "
          f"decode speed-up {decode_x:.2f}x >= 1.5x: {'yes' if decode_x >= 1.5 else 'no'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
