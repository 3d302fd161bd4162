"""The verifiable toy task of notebook 05: multi-digit addition, answered directly or after a short scratchpad.

R1-Zero (DeepSeek-R1, arXiv 2501.12948, §2.2) needs a task whose answers a program can check. Ours:

    prompt      '358+467='
    direct      '<think></think><answer>825</answer>'
    scratchpad  '<think>8+7+0=15,5+6+1=12,3+4+1=08</think><answer>825</answer>'

The scratchpad adds one column at a time from the right, 'digit+digit+carry=two-digit sum', so each step is a lookup
plus a one-digit addition -- easy for a tiny transformer. Answering directly means producing the most significant
digit first, which needs every carry at once -- hard for a tiny model. The base policy is pretrained on a mix that
mostly answers directly (`THINK_SHARE`), so it *can* reason but rarely does; GRPO with accuracy + format rewards has
to discover that thinking pays (the R1-Zero story, at toy scale).

Both completions are well formatted, so the format reward alone does not favour thinking: any shift towards the
scratchpad comes from the accuracy reward.
"""
from __future__ import annotations

import random

import torch

from course_lib.kit.validate import in_unit_interval
from course_lib.model import CharTokenizer
from course_lib.rewards import ANSWER_CLOSE, ANSWER_OPEN, THINK_CLOSE, THINK_OPEN

N_DIGITS = 3                 # operands have exactly this many digits, so every prompt has the same length
THINK_SHARE = 0.25           # share of pretraining examples that use the scratchpad
CHARS = "0123456789+=,"
SPECIALS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)
HELD_OUT_SEED, HELD_OUT_SIZE = 1234, 256


def make_tokenizer() -> CharTokenizer:
    """Digits, '+', '=', ',' and the four tags as single tokens; '</answer>' doubles as end-of-sequence."""
    return CharTokenizer(CHARS, specials=list(SPECIALS))


def eos_id(tok: CharTokenizer) -> int:
    return tok.id_of(ANSWER_CLOSE)


def _check_operands(a: int, b: int, n_digits: int) -> None:
    lo, hi = 10 ** (n_digits - 1), 10 ** n_digits - 1
    for name, v in (("a", a), ("b", b)):
        if not isinstance(v, int) or not lo <= v <= hi:
            raise ValueError(f"{name} must be an int with exactly {n_digits} digits, got {v!r}")


def prompt(a: int, b: int, n_digits: int = N_DIGITS) -> str:
    _check_operands(a, b, n_digits)
    return f"{a}+{b}="


def scratchpad(a: int, b: int, n_digits: int = N_DIGITS) -> str:
    """Column sums from the right: 'x+y+carry=ss' with ss always two digits, joined by ','."""
    _check_operands(a, b, n_digits)
    xs, ys = str(a)[::-1], str(b)[::-1]
    steps, carry = [], 0
    for x, y in zip(xs, ys):
        s = int(x) + int(y) + carry
        steps.append(f"{x}+{y}+{carry}={s:02d}")
        carry = s // 10
    return ",".join(steps)


def completion(a: int, b: int, think: bool, n_digits: int = N_DIGITS) -> str:
    reasoning = scratchpad(a, b, n_digits) if think else ""
    return f"{THINK_OPEN}{reasoning}{THINK_CLOSE}{ANSWER_OPEN}{a + b}{ANSWER_CLOSE}"


def max_completion_tokens(n_digits: int = N_DIGITS) -> int:
    """Tokens in the longest well-formed completion: 4 tags, n_digits steps of 8 characters with n_digits-1 commas
    between them, and an answer of up to n_digits+1 digits."""
    return 4 + (9 * n_digits - 1) + (n_digits + 1)


def held_out_problems(n: int = HELD_OUT_SIZE, n_digits: int = N_DIGITS) -> list[tuple[int, int]]:
    """A fixed list of distinct problems, never drawn for training (`sample_problems` skips them)."""
    rng = random.Random(HELD_OUT_SEED)
    lo, hi = 10 ** (n_digits - 1), 10 ** n_digits - 1
    seen: dict[tuple[int, int], None] = {}
    while len(seen) < n:
        seen[(rng.randint(lo, hi), rng.randint(lo, hi))] = None
    return list(seen)


_HELD_OUT_CACHE: dict[int, set] = {}


def sample_problems(n: int, rng: random.Random, n_digits: int = N_DIGITS) -> list[tuple[int, int]]:
    """n training problems (a, b), drawn with `rng`, excluding the held-out set."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if n_digits not in _HELD_OUT_CACHE:
        _HELD_OUT_CACHE[n_digits] = set(held_out_problems(n_digits=n_digits))
    held = _HELD_OUT_CACHE[n_digits]
    lo, hi = 10 ** (n_digits - 1), 10 ** n_digits - 1
    out = []
    while len(out) < n:
        p = (rng.randint(lo, hi), rng.randint(lo, hi))
        if p not in held:
            out.append(p)
    return out


def pretrain_batch(tok: CharTokenizer, batch_size: int, rng: random.Random, think_share: float = THINK_SHARE,
                   n_digits: int = N_DIGITS, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token training pairs (x, y) for the base policy; prompt tokens and padding are -100 in y (not learned).

    Each example is prompt + completion, the completion with the scratchpad with probability think_share.
    """
    in_unit_interval("think_share", think_share)
    rows, n_prompt = [], len(tok.encode(prompt(10 ** (n_digits - 1), 10 ** (n_digits - 1), n_digits)))
    for a, b in sample_problems(batch_size, rng, n_digits):
        rows.append(tok.encode(prompt(a, b, n_digits) + completion(a, b, rng.random() < think_share, n_digits)))
    T = max(len(r) for r in rows)
    x = torch.full((batch_size, T - 1), tok.id_of(ANSWER_CLOSE), dtype=torch.long)
    y = torch.full((batch_size, T - 1), -100, dtype=torch.long)
    for i, r in enumerate(rows):
        r = torch.tensor(r)
        x[i, :len(r) - 1] = r[:-1]
        y[i, n_prompt - 1:len(r) - 1] = r[n_prompt:]
    return x.to(device), y.to(device)


def sample_prompts(n: int, rng: random.Random, n_digits: int = N_DIGITS) -> tuple[list[str], list[int]]:
    """n training prompts and their answers, in the shape `grpo.grpo_train` asks for."""
    probs = sample_problems(n, rng, n_digits)
    return [prompt(a, b, n_digits) for a, b in probs], [a + b for a, b in probs]


def is_thinking(completion_text: str) -> bool:
    """Did the completion write anything inside <think>...</think>?"""
    start = completion_text.find(THINK_OPEN)
    end = completion_text.find(THINK_CLOSE)
    return start != -1 and end > start + len(THINK_OPEN)


@torch.no_grad()
def held_out_pass_at_1(model, tok: CharTokenizer, problems: list[tuple[int, int]] | None = None,
                       temperature: float = 1.0, seed: int = 0, n_digits: int = N_DIGITS) -> dict:
    """Held-out pass@1: one sample per problem (temperature 1, a fixed seed, so the same model gives the same number).

    Returns accuracy, think_share (share of completions with a non-empty scratchpad) and length (mean tokens).
    """
    from course_lib.grpo import rollout
    from course_lib.rewards import accuracy_reward

    problems = held_out_problems(n_digits=n_digits) if problems is None else problems
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    roll = rollout(model, tok, [prompt(a, b, n_digits) for a, b in problems], 1, max_completion_tokens(n_digits) + 4,
                   temperature, eos_id(tok), gen)
    acc = accuracy_reward(roll["texts"], [a + b for a, b in problems])
    return {"accuracy": sum(acc) / len(acc),
            "think_share": sum(map(is_thinking, roll["texts"])) / len(acc),
            "length": roll["mask"].sum(1).mean().item()}




@torch.no_grad()
def evaluate_forced(model, tok: CharTokenizer, think: bool, problems: list[tuple[int, int]] | None = None,
                    temperature: float = 1.0, seed: int = 0, n_digits: int = N_DIGITS) -> float:
    """Held-out accuracy when the completion is forced to start the direct way ('<think></think>') or the scratchpad
    way ('<think>' + the first scratchpad digit): how good each style is, separately from how often it is chosen."""
    from course_lib.grpo import rollout
    from course_lib.rewards import accuracy_reward

    problems = held_out_problems(n_digits=n_digits) if problems is None else problems
    prefixes = [THINK_OPEN + (str(a)[-1] if think else THINK_CLOSE) for a, _ in problems]
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    roll = rollout(model, tok, [prompt(a, b, n_digits) + pre for (a, b), pre in zip(problems, prefixes)], 1,
                   max_completion_tokens(n_digits) + 4, temperature, eos_id(tok), gen)
    texts = [pre + t for pre, t in zip(prefixes, roll["texts"])]
    acc = accuracy_reward(texts, [a + b for a, b in problems])
    return sum(acc) / len(acc)


BASE_MODEL = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64)


def load_base(device=None):
    """The shipped base policy (assets/grpo/base.pt, made by assets/grpo/make_base.py) and its tokenizer."""
    from course_lib import asset_path
    from course_lib.model import ModelConfig, TinyLM

    tok = make_tokenizer()
    model = TinyLM(ModelConfig(vocab_size=tok.vocab_size, **BASE_MODEL))
    state = torch.load(asset_path("grpo", "base.pt"), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.to(device or "cpu").eval(), tok


def reward_fns() -> dict:
    """R1-Zero's two rule-based rewards (R1 §2.2.2): accuracy + format, summed by `grpo.grpo_train`.

    Every reward is called as `fn(completions, answers)`. The format reward ignores the answers and does not require a
    non-empty thinking block, so a direct answer and a scratchpad are equally well formed."""
    from course_lib.rewards import accuracy_reward, format_reward

    return {"accuracy": accuracy_reward, "format": lambda completions, answers: format_reward(completions)}


def grpo_config(**overrides):
    """The notebook's default GRPO settings for this task; keyword arguments override single fields."""
    from course_lib.grpo import GRPOConfig

    defaults = dict(steps=60, prompts_per_step=8, group_size=8, max_new_tokens=max_completion_tokens() + 2,
                    temperature=1.0, lr=5e-4, beta=0.001, epsilon=0.2, loss_type="grpo", eval_every=10, seed=0)
    return GRPOConfig(**{**defaults, **overrides})


def r1_zero(model, tok: CharTokenizer, cfg=None, eval_problems: list[tuple[int, int]] | None = None,
            progress: bool = True) -> dict:
    """GRPO on the addition task with accuracy + format rewards only, evaluated on the held-out problems."""
    from course_lib.grpo import grpo_train

    return grpo_train(model, tok, sample_prompts, reward_fns(), cfg or grpo_config(), eos_id=eos_id(tok),
                      evaluate=lambda m: held_out_pass_at_1(m, tok, eval_problems), progress=progress)
