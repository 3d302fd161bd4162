"""The course's small multi-domain text corpus (assets/corpus): load the parts, split, and draw batches.

Four domains -- English prose, Python code, arithmetic, Chinese -- about 0.3 MB each; provenance and
licences are in assets/corpus/README.md. Each part is split by position: the first (1 - val_fraction)
of its tokens are for training, the rest for validation, so the two never overlap.

    corpus = Corpus()                                   # byte-level tokens by default
    x, y = corpus.get_batch("train", batch_size=8, seq_len=64, generator=g)
    x, y, dom = corpus.get_batch("val", 8, 64, generator=g, return_domains=True)
"""
from __future__ import annotations

import torch

from course_lib import asset_path
from course_lib.kit.validate import one_of
from course_lib.model import ByteTokenizer

DOMAINS = ("english", "python", "arithmetic", "chinese")
SPLITS = ("train", "val")


def load_parts(domains=None) -> dict[str, str]:
    """Text of each requested part, read from assets/corpus/<domain>.txt."""
    domains = DOMAINS if domains is None else tuple(domains)
    for d in domains:
        if d not in DOMAINS:
            raise ValueError(f"domains: unknown domain {d!r}; choose from {DOMAINS}")
    if not domains:
        raise ValueError("domains must name at least one domain")
    return {d: asset_path("corpus", f"{d}.txt").read_text(encoding="utf-8") for d in domains}


class Corpus:
    """Token ids of each domain, split into train and validation, with random-window batches.

    ``tokenizer`` needs ``encode(str) -> list[int]``; ``max_chars`` (optional) keeps only the start of
    each part, for quick experiments.
    """

    def __init__(self, tokenizer=None, domains=None, val_fraction: float = 0.1, max_chars: int | None = None):
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be strictly between 0 and 1, got {val_fraction}")
        if max_chars is not None and max_chars < 1:
            raise ValueError(f"max_chars must be >= 1, got {max_chars}")
        self.tokenizer = tokenizer if tokenizer is not None else ByteTokenizer()
        self.texts = load_parts(domains)
        if max_chars is not None:
            self.texts = {d: t[:max_chars] for d, t in self.texts.items()}
        self.domains = tuple(self.texts)
        self.data = {"train": {}, "val": {}}
        for d, text in self.texts.items():
            ids = torch.tensor(self.tokenizer.encode(text), dtype=torch.long)
            cut = int(len(ids) * (1 - val_fraction))
            self.data["train"][d], self.data["val"][d] = ids[:cut], ids[cut:]

    def num_tokens(self, split: str = "train") -> dict[str, int]:
        self._check_split(split)
        return {d: len(ids) for d, ids in self.data[split].items()}

    def get_batch(self, split: str, batch_size: int, seq_len: int, generator: torch.Generator | None = None,
                  domain: str | None = None, device=None, return_domains: bool = False):
        """Random windows: x (B, T) and the next tokens y (B, T); each row comes from one domain.

        Rows pick their domain uniformly (or all use ``domain``), then a uniform start position inside that
        domain's split. With ``return_domains`` also returns the (B,) domain index of each row (into
        ``self.domains``).
        """
        self._check_split(split)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        if domain is not None:
            one_of("domain", domain, self.domains)
        if domain is None:
            dom = torch.randint(len(self.domains), (batch_size,), generator=generator)
        else:
            dom = torch.full((batch_size,), self.domains.index(domain))
        xs, ys = [], []
        for i in dom.tolist():
            ids = self.data[split][self.domains[i]]
            if len(ids) < seq_len + 1:
                raise ValueError(f"seq_len={seq_len} is longer than the {split} split of {self.domains[i]!r} "
                                 f"({len(ids)} tokens)")
            start = int(torch.randint(len(ids) - seq_len, (1,), generator=generator))
            xs.append(ids[start:start + seq_len])
            ys.append(ids[start + 1:start + seq_len + 1])
        x, y = torch.stack(xs), torch.stack(ys)
        if device is not None:
            x, y = x.to(device), y.to(device)
        return (x, y, dom) if return_domains else (x, y)

    def alphabet(self) -> str:
        """Every distinct character of the loaded parts, sorted (for a CharTokenizer)."""
        return "".join(sorted(set("".join(self.texts.values()))))

    @staticmethod
    def _check_split(split: str) -> None:
        one_of("split", split, SPLITS)
