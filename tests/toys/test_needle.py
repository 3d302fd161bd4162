"""course_lib.toys.needle: notebook 07's find-the-needle task, its one-layer DSA model, training and measuring.

The batch's promises are checked row by row; the model's dense answer against a plain full-sequence DSA pass (DSA
keeping every token is MLA); training against which parameters moved; accuracy_and_recall's recall against its definition.
"""
import pytest
import torch

from course_lib.toys.needle import (accuracy, accuracy_and_recall, indexer_scores_and_target, make_needle_model,
                                    needle_batch, train_dense, warmup_indexer)

torch.set_num_threads(2)


def test_needle_batch_keeps_its_promises_row_by_row():
    keys, values, needle, answer = needle_batch(64, 10, n_keys=5, n_values=3, generator=torch.Generator().manual_seed(0))
    assert keys.shape == values.shape == (64, 10) and needle.shape == answer.shape == (64,)
    assert keys.min() >= 0 and keys.max() < 5 and values.min() >= 0 and values.max() < 3
    for b in range(64):
        row = keys[b].tolist()
        query = row[-1]
        assert [t for t in range(9) if row[t] == query] == [needle[b].item()]     # the query key occurs once before
        assert answer[b] == values[b, needle[b]]
    # with only 5 keys and 9 earlier tokens the other keys repeat: the needle is unique, not every key
    assert any(len(set(keys[b, :-1].tolist())) < 9 for b in range(64))
    again = needle_batch(64, 10, n_keys=5, n_values=3, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip((keys, values, needle, answer), again))


@pytest.mark.parametrize("kwargs,name", [({"batch": 0}, "batch"), ({"length": 0}, "length"), ({"length": 1}, "length"),
                                         ({"n_keys": 1}, "n_keys"), ({"n_values": 0}, "n_values"),
                                         ({"batch": 2.0}, "batch")])
def test_needle_batch_rejects_bad_sizes_naming_them(kwargs, name):
    args = {"batch": 2, "length": 6, **kwargs}
    with pytest.raises(ValueError, match=name):
        needle_batch(args.pop("batch"), args.pop("length"), **args)


def test_accuracy_by_hand():
    logits = torch.tensor([[0.0, 2.0, 1.0], [5.0, 0.0, 0.0], [0.0, 0.0, 3.0], [1.0, 0.0, 0.0]])
    assert accuracy(logits, torch.tensor([1, 0, 0, 2])) == 0.5              # argmax (1, 0, 2, 0): rows 0 and 1 right


def small_model(seed=0):
    return make_needle_model(d_model=32, n_heads=2, n_keys=8, n_values=4, index_n_heads=2, index_head_dim=8,
                             seed=seed)


def test_dense_forward_is_the_last_row_of_a_full_dsa_pass():
    """forward(k=None) builds the cache from projections and runs one decode step; a plain prefill of the whole
    sequence with index_topk >= T (every token kept) must give the same last row."""
    model = small_model().double()
    keys, values, _, _ = needle_batch(3, 7, 8, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = model(keys, values)
        x = model.embed(keys, values)
        att = model.attention
        att.index_topk = 7
        o = att(x)[:, -1]
        want = model.head(model.norm(x[:, -1] + o))
        att.index_topk = 1
        assert torch.allclose(got, want, atol=1e-10)
        assert torch.allclose(model(keys, values, k=7), got, atol=1e-10)           # k = T keeps every token
        assert not torch.allclose(model(keys, values, k=1), got, atol=1e-6)        # k = 1 keeps one
    assert model.attention.index_topk == 1                                         # forward puts k back


def test_the_query_token_carries_no_value():
    model = small_model()
    keys, values, _, _ = needle_batch(2, 5, 8, 4, generator=torch.Generator().manual_seed(2))
    other = values.clone()
    other[:, -1] = (values[:, -1] + 1) % 4
    with torch.no_grad():
        assert torch.equal(model.embed(keys, values), model.embed(keys, other))
        want_last = model.key_emb(keys[:, -1]) + model.value_emb.weight[4]         # id n_values marks the query
        assert torch.equal(model.embed(keys, values)[:, -1], want_last)


def test_indexer_target_is_the_last_querys_dense_attention():
    model = small_model()
    keys, values, _, _ = needle_batch(3, 6, 8, 4, generator=torch.Generator().manual_seed(3))
    scores, target = indexer_scores_and_target(model, keys, values)
    assert scores.shape == target.shape == (3, 1, 6)
    assert torch.allclose(target.sum(-1), torch.ones(3, 1)) and (target >= 0).all()


def _changed(before, model):
    return {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}


def test_train_dense_leaves_the_indexer_and_warmup_trains_only_it():
    model = small_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = train_dense(model, 1, 6, batch=4)
    assert len(losses) == 1 and all(loss > 0 for loss in losses)
    changed = _changed(before, model)
    assert changed and not any(".indexer." in f".{n}" for n in changed)
    assert "head.weight" in changed and "key_emb.weight" in changed
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    kl = warmup_indexer(model, 1, 6, batch=4)
    assert len(kl) == 1 and all(v >= 0 for v in kl)
    changed = _changed(before, model)
    assert changed and all(n.startswith("attention.indexer.") for n in changed)


def test_accuracy_and_recall_reports_both_per_k():
    model = small_model()
    out = accuracy_and_recall(model, 6, [1, 6], batch=8)
    assert set(out) == {"dense", "sparse", "recall_needle", "recall_top1"}
    assert set(out["sparse"]) == set(out["recall_needle"]) == {1, 6}
    # keeping all 6 tokens: the needle and the most-attended token are always among them, and the answer is dense's
    assert out["recall_needle"][6] == 1.0 and out["recall_top1"][6] == 1.0
    assert out["sparse"][6] == out["dense"]
    assert all(0.0 <= v <= 1.0 for d in (out["sparse"], out["recall_needle"], out["recall_top1"]) for v in d.values())
    # the accuracy is the fraction of right answers on accuracy_and_recall's own batch (seed 3)
    keys, values, _, answer = needle_batch(8, 6, 8, 4, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert out["dense"] == accuracy(model(keys, values), answer)
