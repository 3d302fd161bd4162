"""CSA2 (course_lib.csa2) against the released V4.1 code's equations on hand-worked cases (no reference runs on a
CPU: the NeMo port needs TileLang/CUDA, transformers has no V4.1 layer)."""
import math

import pytest
import torch

from course_lib.csa2 import (V41_FLASH, CSA2Layout, attention_flops, cache_bytes, candidate_blocks, compare_v4_flash,
                             compress, entry_bytes, index_scores, select_topk, trace)


def test_v41_flash_modes_follow_the_released_schedule():
    modes = [V41_FLASH.mode(i) for i in range(40)]
    assert modes[:2] == ["window", "window"]
    assert [i for i, m in enumerate(modes) if m == "full"] == [2, 8, 14, 20]
    assert [i for i, m in enumerate(modes) if m == "reindex"] == [24, 28, 32, 36]
    assert modes.count("reuse") == 40 - 2 - 4 - 4
    assert V41_FLASH.source(13, "kv") == 8 and V41_FLASH.source(27, "kv") == 20
    assert V41_FLASH.source(27, "index") == 24 and V41_FLASH.source(23, "index") == 20
    cand = [row[0] for row in V41_FLASH.table() if row[5]]
    assert cand == [24, 28, 32, 36]                     # index layers after the candidate source (20)


@pytest.mark.parametrize("kwargs, name", [
    (dict(compress_ratios=(0, 2, 2), kv_sources=(2,), index_sources=(2,)), "kv_sources"),   # layer 1 has no source
    (dict(compress_ratios=(0, 2, 1), kv_sources=(1,), index_sources=(1,)), "kv_sources"),   # ratio 1 reads ratio 2
    (dict(compress_ratios=(0, 2), kv_sources=(1,), index_sources=(0, 1)), "index_sources"),  # window layer indexes
    (dict(compress_ratios=(2, 2), kv_sources=(0,), index_sources=(1,)), "kv_sources"),       # KV source not indexing
    (dict(compress_ratios=(2, 2), kv_sources=(1, 0), index_sources=(0, 1)), "kv_sources"),
    (dict(compress_ratios=(2, 2), kv_sources=(0,), index_sources=(0, 1), candidate_source=1), "candidate_source"),
    (dict(compress_ratios=(2, -1), kv_sources=(0,), index_sources=(0,)), "compress_ratios"),
    (dict(compress_ratios=(2,), kv_sources=(0,), index_sources=(0,), index_topk=0), "index_topk"),
])
def test_bad_layouts_raise(kwargs, name):
    with pytest.raises(ValueError, match=name):
        CSA2Layout("bad", **kwargs)


def test_entry_bytes_and_cache_by_hand():
    assert entry_bytes(V41_FLASH) == {"window": 528.0, "compressed": 288.0, "index": 68.0}
    S = 2 ** 20
    # 40 windows of 128 FP8 vectors; layers 2, 8, 14 keep S/2 vectors, layer 20 keeps S, each 288 + 68 bytes
    expect = 40 * 128 * 528 + (3 * S // 2 + S) * (288 + 68)
    assert cache_bytes(V41_FLASH, S) == expect
    assert cache_bytes(V41_FLASH, S) / S == pytest.approx(890, abs=3)
    # without sharing every one of the 38 compressed layers would keep its own: 18 at ratio 2, 20 at ratio 1
    assert cache_bytes(V41_FLASH, S, shared=False) == 40 * 128 * 528 + (18 * S // 2 + 20 * S) * 356
    assert cache_bytes(V41_FLASH, 100) == 40 * 100 * 528 + (3 * 50 + 100) * 356
    with pytest.raises(ValueError, match="context"):
        cache_bytes(V41_FLASH, 0)


def test_attention_flops_by_hand_and_against_v4_flash():
    S = 2 ** 20
    per_key, per_score = 2 * 64 * 2 * 512, 2 * 32 * 129
    windows = 40 * 128 * per_key
    selected = 38 * 512 * per_key
    scores_full = 3 * (S // 2) + S                        # layers 2, 8, 14 (ratio 2) and 20 (ratio 1)
    scores_hier = 4 * 2048 * 8                            # layers 24..36 score inside 2048 blocks of 8
    assert attention_flops(V41_FLASH, S) == windows + selected + per_score * (scores_full + scores_hier)
    assert attention_flops(V41_FLASH, S, hierarchical=False) == windows + selected + per_score * (scores_full + 4 * S)
    rows = {r["context"]: r for r in compare_v4_flash()}
    assert sorted(rows) == [2 ** p for p in range(12, 21)]
    big = rows[S]
    assert big["v4_cache"] / big["v41_cache"] == pytest.approx(3.87, abs=0.05)  # the ~4x smaller cache at 1M
    assert big["v41_flops"] < big["v41_flops_flat"] < big["v4_flops"]


def test_compress_softmax_pooling_by_hand():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])      # 3 tokens: one group of 2 and a dropped tail
    wkv = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    wgate = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    # group 0: kv = (1, 0), (0, 1); gate channel 0 equal -> 1/2 each; channel 1: exp(log3 * 1) vs exp(0) -> 3/4, 1/4
    out = compress(x, wkv, wgate, ratio=2)
    assert out.shape == (1, 2)
    assert torch.allclose(out, torch.tensor([[0.5, 0.25]]))
    assert torch.equal(compress(x, wkv, ratio=1), x)            # ratio 1: a per-token projection
    with pytest.raises(ValueError, match="ratio"):
        compress(x, wkv, wgate, ratio=0)


def test_index_scores_relu_weights_and_visibility():
    q = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]).expand(4, 2, 2)      # 4 queries, 2 heads
    keys = torch.tensor([[2.0, -1.0], [-3.0, 1.0]])                   # 2 compressed vectors (ratio 2)
    w = torch.tensor([[1.0, 2.0]]).expand(4, 2)
    s = index_scores(q, keys, w, ratio=2)
    # key 0: relu(2) * 1 + relu(-1) * 2 = 2;  key 1: relu(-3) * 1 + relu(1) * 2 = 2
    # visible: t < (s + 1) // 2  ->  query 0 sees nothing, 1-2 see key 0, 3 sees both
    inf = float("-inf")
    assert s.tolist() == [[inf, inf], [2.0, inf], [2.0, inf], [2.0, 2.0]]


def test_candidate_blocks_keep_the_newest_block_and_the_best():
    # one query at position 11, ratio 1: vectors 0..11 visible; blocks of 4 -> blocks 0, 1, 2 (block 2 is newest)
    scores = torch.tensor([[5.0, 0, 0, 0, 1, 9, 2, 0, 0, 3, 0, 0]])
    keep = candidate_blocks(scores, n_blocks=2, block_size=4, ratio=1, positions=torch.tensor([11]))
    assert keep[0].tolist() == [False] * 4 + [True] * 8     # newest block 2 forced in, then block 1 (max 9)
    keep3 = candidate_blocks(scores, n_blocks=3, block_size=4, ratio=1, positions=torch.tensor([11]))
    assert keep3.all()
    top = select_topk(scores, 2, keep)
    assert top.tolist() == [[5, 9]]                           # 9 at 5, then 3 at 9 inside the candidates
    assert select_topk(scores, 2).tolist() == [[0, 5]]        # without candidates vector 0 (score 5) wins
    short = torch.tensor([[1.0, float("-inf"), float("-inf")]])
    assert select_topk(short, 2).tolist() == [[0, -1]]        # fewer visible than k: -1


def test_trace_counts_what_each_mode_computes():
    layout = CSA2Layout("toy", (0, 2, 2, 1, 1, 1), kv_sources=(1, 3), index_sources=(1, 3, 5), candidate_source=3,
                        candidate_blocks=1, candidate_block_size=2, window=4)
    rows = trace(layout, 8)
    assert [r["mode"] for r in rows] == ["window", "full", "reuse", "full", "reuse", "reindex"]
    assert rows[1]["writes_kv"] == 4 and rows[3]["writes_kv"] == 8 and rows[2]["writes_kv"] == 0
    assert rows[1]["index_scores"] == sum((s + 1) // 2 for s in range(8))          # 0+1+1+2+2+3+3+4
    assert rows[3]["index_scores"] == sum(s + 1 for s in range(8))                 # candidate source: all
    assert rows[5]["index_scores"] == sum(min(s + 1, 2) for s in range(8))         # only 1 block of 2 candidates
    assert rows[4]["topk_from"] == 3 and rows[5]["kv_from"] == 3


def test_compressor_and_candidates_match_nemo_automodel_v41():
    """The same weights and scores in NeMo AutoModel's port of the released V4.1 code (nemo-automodel >= 0.7.0)."""
    from types import SimpleNamespace

    ref = pytest.importorskip("nemo_automodel.components.models.deepseek_v41.attention")
    cfg = SimpleNamespace(hidden_size=12, head_dim=6, rms_norm_eps=1e-6)
    torch.manual_seed(0)
    for ratio in (1, 2, 3):
        comp = ref._Compressor(cfg, ratio=ratio, dtype=torch.float32)
        with torch.no_grad():
            for p in comp.parameters():
                p.normal_()
        x = torch.randn(2, 7, 12)
        ours = compress(x, comp.wkv.weight, getattr(comp, "wgate", None) and comp.wgate.weight, ratio)
        assert torch.allclose(comp.norm(ours), comp(x), atol=1e-5), ratio      # the release then RMS-normalises
    S, ratio = 40, 2
    pos = torch.arange(S)
    visible = torch.arange(S // ratio)[None] < ((pos + 1) // ratio)[:, None]
    scores = torch.randn(S, S // ratio).masked_fill(~visible, float("-inf"))
    theirs = ref._select_candidate_blocks(scores[None], ((pos + 1) // ratio)[None, :, None], topk_blocks=2,
                                          block_size=4)[0] & visible
    assert torch.equal(candidate_blocks(scores, 2, 4, ratio), theirs)
