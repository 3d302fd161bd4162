"""The toy R1 recipe of notebook 06: a bilingual variant of 05's addition task and each training stage as a function.

DeepSeek-R1 (arXiv 2501.12948) §2.2.4 reports that R1-Zero "struggles with challenges like poor readability, and
language mixing". To show that at toy scale the reasoning must be able to drift between two symbol sets, so this
variant writes each scratchpad step (05's `arith.scratchpad`) in English or in Chinese:

    English   '8 plus 7 plus 0 is 15'          Chinese   '8加7加0得15'

The base policy is pretrained on direct answers, a minority of scratchpads whose steps switch language at random, and
a little "general" (non-reasoning) data: 'a?b=' asks for the larger of a and b, answered without reasoning (R1
§2.3.3: "for simpler queries ... we do not provide a CoT"). The rewards are 05's (`course_lib.rewards`): accuracy,
format and the language-consistency share of English tokens in the <think> block.

Stages (each a function below, the notebook calls them in order):
    R1-Zero     `rl` from the base with accuracy + format rewards                      (R1 §2.2)
    cold start  `sft` of the base on a few clean English traces                          (R1 §2.3.1)
    reasoning RL `rl` with accuracy + format + language rewards                          (R1 §2.3.2)
    rejection sampling + SFT: `distill.rejection_sample`, general data, `sft` of the base  (R1 §2.3.3)
    final RL    `rl` on reasoning and general prompts                                    (R1 §2.3.4)
    students    `sft` / KD / `rl` of a smaller base                                      (R1 §2.4, §4.1)
"""
from __future__ import annotations

import copy
import random
from dataclasses import asdict
from pathlib import Path

import torch

from course_lib.toys import arith
from course_lib import ASSETS, distill, grpo, rewards
from course_lib.kit.validate import in_unit_interval, one_of
from course_lib.model import CharTokenizer, ModelConfig, TinyLM
from course_lib.rewards import ANSWER_CLOSE, ANSWER_OPEN, THINK_CLOSE, THINK_OPEN

EN_PLUS, EN_IS = " plus ", " is "     # one token each; the spaces only make the English trace readable
ZH_PLUS, ZH_IS = "加", "得"
LANGS = ("en", "zh", "mix")
GENERAL_OP = "?"                      # 'a?b=' -> the larger of a and b
N_DIGITS = arith.N_DIGITS
MAX_NEW_TOKENS = arith.max_completion_tokens() + 2
CHECKPOINT = ASSETS / "distill" / "base_models.pt"


def make_tokenizer() -> CharTokenizer:
    """05's alphabet plus '?', the two Chinese words as characters and the two English words as single tokens."""
    return CharTokenizer(arith.CHARS + GENERAL_OP + ZH_PLUS + ZH_IS,
                         specials=list(arith.SPECIALS) + [EN_PLUS, EN_IS])


def eos_id(tok: CharTokenizer) -> int:
    return tok.id_of(ANSWER_CLOSE)


# ----------------------------------------------------------------------------------------------------------------
# The task
# ----------------------------------------------------------------------------------------------------------------

def scratchpad(a: int, b: int, lang: str = "en", rng: random.Random | None = None) -> str:
    """05's column-by-column scratchpad, each step in English or Chinese; lang='mix' flips a coin per step."""
    one_of("lang", lang, LANGS)
    if lang == "mix" and rng is None:
        raise ValueError("lang='mix' needs an rng to draw each step's language")
    steps = []
    for step in arith.scratchpad(a, b).split(","):          # 'x+y+c=ss', checked arithmetic from 05
        lhs, s = step.split("=")
        x, y, c = lhs.split("+")
        step_lang = rng.choice(("en", "zh")) if lang == "mix" else lang
        plus, is_ = (EN_PLUS, EN_IS) if step_lang == "en" else (ZH_PLUS, ZH_IS)
        steps.append(f"{x}{plus}{y}{plus}{c}{is_}{s}")
    return ",".join(steps)


def completion(a: int, b: int, think: bool, lang: str = "en", rng: random.Random | None = None) -> str:
    reasoning = scratchpad(a, b, lang, rng) if think else ""
    return f"{THINK_OPEN}{reasoning}{THINK_CLOSE}{ANSWER_OPEN}{a + b}{ANSWER_CLOSE}"


def general_prompt(a: int, b: int) -> str:
    arith.prompt(a, b)                                       # same operand checks as the addition prompts
    return f"{a}{GENERAL_OP}{b}="


def general_completion(a: int, b: int) -> str:
    return f"{THINK_OPEN}{THINK_CLOSE}{ANSWER_OPEN}{max(a, b)}{ANSWER_CLOSE}"


def general_samples(n: int, rng: random.Random) -> list[tuple[str, str]]:
    """n non-reasoning (prompt, completion) pairs: the 'general' data of R1 §2.3.3 at toy scale."""
    return [(general_prompt(a, b), general_completion(a, b)) for a, b in arith.sample_problems(n, rng)]


def reasoning_samples(n: int, rng: random.Random, lang: str = "en") -> list[tuple[str, str]]:
    """n addition problems with a full scratchpad in `lang`: the cold-start data of R1 §2.3.1 when lang='en'."""
    return [(arith.prompt(a, b), completion(a, b, True, lang, rng)) for a, b in arith.sample_problems(n, rng)]


def base_samples(n: int, rng: random.Random, think_share: float = 0.3, general_share: float = 0.2):
    """The pretraining mix of the base models: mostly direct answers, some mixed-language scratchpads, some general."""
    out = []
    for a, b in arith.sample_problems(n, rng):
        u = rng.random()
        if u < general_share:
            out.append((general_prompt(a, b), general_completion(a, b)))
        else:
            out.append((arith.prompt(a, b), completion(a, b, rng.random() < think_share, "mix", rng)))
    return out


def sample_prompts(general_share: float = 0.0):
    """A `grpo_train` prompt sampler: addition prompts, a share of them general ones; answers are integers."""
    in_unit_interval("general_share", general_share)

    def sample(n, rng):
        prompts, answers = [], []
        for a, b in arith.sample_problems(n, rng):
            if rng.random() < general_share:
                prompts.append(general_prompt(a, b)), answers.append(max(a, b))
            else:
                prompts.append(arith.prompt(a, b)), answers.append(a + b)
        return prompts, answers

    return sample


REWARDS = {
    "accuracy": rewards.accuracy_reward,
    "format": lambda completions, answers: rewards.format_reward(completions),
    "language": lambda completions, answers: rewards.language_reward(completions, "en"),
}


def reward_fns(*names: str) -> dict:
    """The named rule-based rewards in `grpo_train`'s convention fn(completions, answers)."""
    unknown = [n for n in names if n not in REWARDS]
    if unknown or not names:
        raise ValueError(f"names must be some of {list(REWARDS)}, got {list(names)}")
    return {n: REWARDS[n] for n in names}


def token_label(token: str) -> str:
    """A token as a plot label; the two Chinese words are romanised when matplotlib has no CJK font to draw them."""
    from course_lib.kit.style import has_cjk_font

    if not has_cjk_font():
        token = token.replace(ZH_PLUS, "jia").replace(ZH_IS, "de")
    return repr(token)


def mixes_languages(text: str) -> bool:
    """Does the reasoning contain both English and Chinese words?"""
    share = rewards.language_consistency(text, "en")
    return 0.0 < share < 1.0


def _mean(xs) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


@torch.no_grad()
def held_out_metrics(model, tok: CharTokenizer, n: int = 128, seed: int = 0) -> dict:
    """Held-out metrics, one sample per problem at temperature 1 with a fixed seed (the same model gives the same
    numbers): addition accuracy (overall, and with / without a scratchpad), think share, language consistency (English
    share of the reasoning, over the completions that reason), mixed share (reasoning completions that mix both
    languages), length (tokens), and accuracy on the same n problems asked as general 'a?b=' questions."""
    if not 1 <= n <= arith.HELD_OUT_SIZE:
        raise ValueError(f"n must be between 1 and {arith.HELD_OUT_SIZE} (the held-out set), got {n}")
    problems = arith.held_out_problems()[:n]
    prompts = [arith.prompt(a, b) for a, b in problems] + [general_prompt(a, b) for a, b in problems]
    answers = [a + b for a, b in problems] + [max(a, b) for a, b in problems]
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    roll = grpo.rollout(model, tok, prompts, 1, MAX_NEW_TOKENS, 1.0, eos_id(tok), gen)
    acc = rewards.accuracy_reward(roll["texts"], answers)
    texts = roll["texts"][:n]
    thinks = [arith.is_thinking(t) for t in texts]
    thinking = [t for t, th in zip(texts, thinks) if th]
    return {"accuracy": sum(acc[:n]) / n,
            "think_share": len(thinking) / n,
            "acc_think": _mean([a for a, th in zip(acc, thinks) if th]),
            "acc_direct": _mean([a for a, th in zip(acc, thinks) if not th]),
            "language": _mean(rewards.language_reward(thinking, "en")),
            "mixed": _mean([float(mixes_languages(t)) for t in thinking]),
            "length": roll["mask"][:n].sum(1).mean().item(),
            "general": sum(acc[n:]) / n}




# ----------------------------------------------------------------------------------------------------------------
# Stages
# ----------------------------------------------------------------------------------------------------------------

def sft(model, tok: CharTokenizer, samples, steps: int, batch_size: int = 32, lr: float = 2e-3, seed: int = 0,
        loss_fn=None, desc: str = "SFT", progress: bool = True) -> dict:
    """Supervised fine-tuning on (prompt, completion) pairs (only completion tokens are learned); in place.

    loss_fn: None for cross-entropy on the samples (sequence-level distillation when they are a teacher's), or
    `distill.kd_loss_fn(teacher, T)` for token-level logit distillation on the same sequences.
    """
    device = next(model.parameters()).device
    x, y = distill.sequence_batch(tok, samples, eos_id(tok), device)
    from course_lib.kit.train_loop import train_lm

    return train_lm(model, distill.batch_sampler(x, y, batch_size, seed), steps, lr=lr, warmup=min(10, steps // 5),
                    loss_fn=loss_fn, progress=progress, desc=desc)


def rl(model, tok: CharTokenizer, reward_names=("accuracy", "format"), steps: int = 30, general_share: float = 0.0,
       evaluate_fn=None, **cfg) -> dict:
    """GRPO (05's `grpo.grpo_train`) with the named rewards on addition (+ a share of general) prompts; in place."""
    cfg.setdefault("max_new_tokens", MAX_NEW_TOKENS)
    config = grpo.GRPOConfig(steps=steps, **cfg)
    return grpo.grpo_train(model, tok, sample_prompts(general_share), reward_fns(*reward_names), config,
                           eos_id=eos_id(tok), evaluate=evaluate_fn)


# ----------------------------------------------------------------------------------------------------------------
# Reporting: one table and two figures for the notebook (pure functions of the measured numbers)
# ----------------------------------------------------------------------------------------------------------------

COLUMNS = {"accuracy": "acc", "think_share": "thinks", "acc_think": "acc|think", "acc_direct": "acc|direct",
           "language": "English", "mixed": "mixed", "length": "tokens", "general": "general", "seconds": "s"}


def results_table(results: dict, columns=None) -> str:
    """A fixed-width text table: one row per stage (dict key), one column per metric (nan prints as '-').

    The default columns leave out 'seconds': wall-clock times differ between runs, the metrics must not.
    """
    columns = [c for c in COLUMNS if c != "seconds"] if columns is None else list(columns)
    unknown = [c for c in columns if c not in COLUMNS]
    if unknown:
        raise ValueError(f"columns must be some of {list(COLUMNS)}, got {unknown}")
    width = max([len(k) for k in results] + [5])
    lines = [f"{'stage':<{width}}" + "".join(f"{COLUMNS[c]:>11}" for c in columns)]
    for name, row in results.items():
        cells = []
        for c in columns:
            v = row.get(c, float("nan"))
            cells.append(f"{'-':>11}" if v != v else f"{v:>11.1f}" if c in ("length", "seconds") else f"{v:>11.2f}")
        lines.append(f"{name:<{width}}" + "".join(cells))
    return "\n".join(lines)


def stages_figure(results: dict, metrics=("accuracy", "think_share", "language")):
    """Grouped bars: each stage's metrics side by side (the language share is over reasoning completions)."""
    from course_lib.kit.style import CYCLE, subplots

    if not results:
        raise ValueError("results must hold at least one stage")
    bad = [m for m in metrics if m not in COLUMNS or m in ("length", "seconds")]
    if bad:
        raise ValueError(f"metrics must be shares in [0, 1] from {list(COLUMNS)[:-2]}, got {bad}")
    names = list(results)
    fig, ax = subplots(width=max(6.0, 1.1 * len(names) + 2), height=3.2)
    w = 0.8 / len(metrics)
    for j, m in enumerate(metrics):
        vals = [results[n].get(m, float("nan")) for n in names]
        ax.bar([i + (j - (len(metrics) - 1) / 2) * w for i in range(len(names))], vals, width=w, color=CYCLE[j],
               label=COLUMNS[m])
    ax.set_xticks(range(len(names)), names, rotation=20)
    ax.set_ylim(0, 1.05)
    ax.legend(ncols=len(metrics), loc="lower center", bbox_to_anchor=(0.5, 1.0))
    return fig


def students_figure(results: dict, names):
    """Accuracy and response length of the students side by side (the comparison of R1 §4.1, at toy scale)."""
    from course_lib.kit.style import COLORS, subplots

    names = list(names)
    missing = [n for n in names if n not in results]
    if missing or not names:
        raise ValueError(f"names must be stages in results, missing {missing}")
    fig, (ax1, ax2) = subplots(1, 2, width=10, height=3.2)
    colours = [COLORS[c] for c in ("grey", "green", "teal", "orange", "red", "blue")]
    for ax, key, label in ((ax1, "accuracy", "held-out accuracy"), (ax2, "length", "response length (tokens)")):
        ax.bar(range(len(names)), [results[n][key] for n in names],
               color=[colours[i % len(colours)] for i in range(len(names))])
        ax.set_xticks(range(len(names)), names, rotation=20)
        ax.set_title(label)
    ax1.set_ylim(0, 1.05)
    return fig


# ----------------------------------------------------------------------------------------------------------------
# The shipped base models
# ----------------------------------------------------------------------------------------------------------------

# Sizes chosen so that the teacher-size base can reason (with a scratchpad it is right about 90% of the time) but
# cannot add directly (about 15%), and the student-size base is weaker at both: the R1-Zero story needs the first,
# the distillation comparison the second.
def teacher_config(vocab_size: int) -> ModelConfig:
    return ModelConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       max_position_embeddings=64)


def student_config(vocab_size: int) -> ModelConfig:
    return ModelConfig(vocab_size=vocab_size, hidden_size=24, num_hidden_layers=2, num_attention_heads=2,
                       max_position_embeddings=64)


def load_base_models(path: str | Path = CHECKPOINT, device=None) -> tuple[TinyLM, TinyLM]:
    """The pretrained teacher-size and student-size base models (assets/distill/make_base_models.py made them)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    models = []
    for key in ("teacher", "student"):
        model = TinyLM(ModelConfig.from_dict(state[f"{key}_config"]))
        model.load_state_dict(state[key])
        models.append(model.to(device).eval())
    return models[0], models[1]


def save_base_models(teacher: TinyLM, student: TinyLM, path: str | Path) -> None:
    state = {"teacher": teacher.state_dict(), "student": student.state_dict(),
             "teacher_config": asdict(teacher.cfg), "student_config": asdict(student.cfg)}
    torch.save(state, path)


def clone(model: TinyLM) -> TinyLM:
    """An independent copy: each stage starts from a checkpoint and must not change it."""
    return copy.deepcopy(model)
