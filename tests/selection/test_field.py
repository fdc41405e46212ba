"""The field's selectors (clip_score, semdedup, ifd, coincide, less) on toy inputs whose right
answer is known."""
import numpy as np
import pytest
import torch

from selfilter.selection import field
from selfilter.selection import registry as reg
from selfilter.training.less import less_scores


def _separated(n, d, seed):
    """``n`` unit rows in ``d`` dims, pairwise cosine well below 0.9 (random in high dimension)."""
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _inputs(arrays):
    n = len(next(iter(arrays.values())))
    return reg.SelectionInputs(n, {k: (lambda v=v: v) for k, v in arrays.items()})


def test_clip_score_keeps_the_highest_similarity():
    s = np.array([0.1, 0.9, 0.3, 0.8, 0.2])
    picked = reg.run_method("clip_score", _inputs({reg.CLIP_SCORE: s}), 2, seed=0)
    assert picked.indices.tolist() == [1, 3]
    assert picked.scores.tolist() == [0.9, 0.8]


def test_semdedup_removes_planted_duplicates_and_nothing_else():
    base = _separated(60, 64, 0)
    rng = np.random.default_rng(1)
    originals = [3, 17, 17, 40, 59]  # 17 has two copies: a group of three keeps one
    dups = np.stack([base[i] + 0.01 * rng.normal(size=64).astype(np.float32) for i in originals])
    x = np.concatenate([base, dups])
    groups = {3: {3, 60}, 17: {17, 61, 62}, 40: {40, 63}, 59: {59, 64}}
    for n_clusters in (1, 4, 8):
        keep = field.semdedup_keep(x, n_clusters, threshold=0.95, seed=0)
        assert keep.sum() == 60, n_clusters
        dropped = set(np.flatnonzero(~keep).tolist())
        in_groups = set().union(*groups.values())
        assert dropped <= in_groups  # nothing outside a duplicate group is removed
        for members in groups.values():
            assert len(members - dropped) == 1  # one representative per group
    # the budget is filled at random from what is left: every kept row, no two of a group
    picked = reg.run_method("semdedup", _inputs({reg.FEATURES: x}), 60,
                            seed=0, options=reg.SelectOptions(n_clusters=4, semdedup_threshold=0.95))
    assert len(set(picked.indices.tolist())) == 60
    assert all(len(members & set(picked.indices.tolist())) == 1 for members in groups.values())


def test_semdedup_with_the_budget_as_threshold_keeps_one_per_group_before_any_duplicate():
    base = _separated(60, 64, 0)
    rng = np.random.default_rng(1)
    originals = [3, 17, 17, 40, 59]
    x = np.concatenate([base, np.stack([base[i] + 0.01 * rng.normal(size=64).astype(np.float32) for i in originals])])
    groups = [{3, 60}, {17, 61, 62}, {40, 63}, {59, 64}]
    for budget in (30, 60):  # exactly the de-duplicated pool at 60
        picked = reg.run_method("semdedup", _inputs({reg.FEATURES: x}), budget, seed=0,
                                options=reg.SelectOptions(n_clusters=4, semdedup_threshold=None))
        chosen = set(picked.indices.tolist())
        assert len(chosen) == budget and all(len(g & chosen) <= 1 for g in groups)
        assert (picked.scores < 0.9).all()  # redundancy of every pick: no near-copy among them
    picked = reg.run_method("semdedup", _inputs({reg.FEATURES: x}), 65, seed=0,
                            options=reg.SelectOptions(n_clusters=4, semdedup_threshold=None))
    assert (picked.scores[-5:] > 0.95).all()  # the planted copies come last


def test_semdedup_fills_from_the_dropped_rows_when_the_budget_needs_them():
    x = np.concatenate([_separated(10, 32, 0)] * 3)  # every row three times
    idx = field.semdedup(x, 15, n_clusters=2, threshold=0.95, seed=0)
    assert len(set(idx.tolist())) == 15
    assert len({i % 10 for i in idx[:10]}) == 10  # the 10 representatives come first


def test_semdedup_is_seeded():
    x = _separated(200, 16, 0)
    a = field.semdedup(x, 50, n_clusters=5, threshold=0.95, seed=3)
    assert np.array_equal(a, field.semdedup(x, 50, n_clusters=5, threshold=0.95, seed=3))
    assert not np.array_equal(a, field.semdedup(x, 50, n_clusters=5, threshold=0.95, seed=4))


def test_ifd_takes_the_highest_below_one_and_ignores_the_rest():
    ifd = np.array([0.5, 1.2, 0.9, np.nan, 0.7, 1.0, 0.95])
    assert field.ifd_select(ifd, 3, seed=0).tolist() == [6, 2, 4]
    full = field.ifd_select(ifd, 7, seed=0)
    assert full[:4].tolist() == [6, 2, 4, 0] and set(full[4:].tolist()) == {1, 3, 5}
    picked = reg.run_method("ifd", _inputs({reg.IFD: ifd}), 2, seed=0)
    assert picked.indices.tolist() == [6, 2] and picked.scores.tolist() == [0.95, 0.9]


def test_spherical_kmeans_recovers_separated_directions():
    centres = _separated(4, 32, 0)
    rng = np.random.default_rng(0)
    truth = np.repeat(np.arange(4), 25)
    x = centres[truth] + 0.05 * rng.normal(size=(100, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels, cents = field.spherical_kmeans(torch.from_numpy(x), 4, seed=1)
    labels = labels.numpy()
    # each true group maps to one cluster and vice versa
    assert {(t, l) for t, l in zip(truth, labels)} == {(t, labels[truth == t][0]) for t in range(4)}
    assert len(set(labels.tolist())) == 4
    np.testing.assert_allclose(cents.norm(dim=1).numpy(), 1.0, atol=1e-5)


def test_transferability_is_highest_for_the_central_centroid():
    c = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.7071, 0.7071, 0.0]])
    t = field.transferability(c)
    assert int(t.argmax()) == 2
    assert t[0] == pytest.approx((0.0 + 0.7071) / 2, abs=1e-4)


def test_mmd_prototype_picks_the_centre_first_then_covers_both_sides():
    x = torch.tensor([[-1.0, 0.0], [-0.9, 0.0], [0.0, 0.0], [0.9, 0.0], [1.0, 0.0]])
    order = field.mmd_prototypes(x, 3, width=1.0)
    assert order[0] == 2
    assert {int(order[1]), int(order[2])} in ({1, 3}, {0, 4}, {0, 3}, {1, 4})


def test_cluster_density_is_one_for_identical_rows_and_smaller_when_spread():
    same = torch.ones(5, 3)
    assert field.cluster_density(same, 1.0) == pytest.approx(1.0)
    spread = torch.eye(3)
    assert field.cluster_density(spread, 1.0) == pytest.approx((3 + 6 * np.exp(-1.0)) / 9)


def test_coincide_fills_the_budget_with_distinct_rows_and_favours_sparse_transferable_clusters():
    rng = np.random.default_rng(0)
    dirs = _separated(3, 16, 2)
    dense = dirs[0] + 0.01 * rng.normal(size=(40, 16))   # a tight (dense) cluster
    sparse1 = dirs[1] + 0.3 * rng.normal(size=(40, 16))  # spread-out clusters
    sparse2 = dirs[2] + 0.3 * rng.normal(size=(40, 16))
    x = np.concatenate([dense, sparse1, sparse2]).astype(np.float32)
    for budget in (1, 12, 60, 120):
        idx, scores = field.coincide(x, budget, n_clusters=3, temperature=0.1, kernel_width=1.0, seed=0)
        assert len(idx) == budget and len(set(idx.tolist())) == budget
    idx, _ = field.coincide(x, 30, n_clusters=3, temperature=0.1, kernel_width=1.0, seed=0)
    from_dense = int((idx < 40).sum())
    assert from_dense < 10  # the near-duplicate cluster gets the smallest share
    picked = reg.run_method("coincide", _inputs({reg.ACTIVATIONS: x}), 30, seed=0,
                            options=reg.SelectOptions(coincide_clusters=3))
    assert np.array_equal(picked.indices, idx)


def test_less_scores_are_mean_cosines_to_the_targets():
    target = np.array([[1.0, 0.0], [0.0, 2.0]])
    train = np.array([[1.0, 1.0], [3.0, 0.0], [-1.0, -1.0], [0.0, 0.0]])
    s = less_scores(train, target)
    np.testing.assert_allclose(s, [np.sqrt(0.5), 0.5, -np.sqrt(0.5), 0.0])
    picked = reg.run_method("less", _inputs({reg.LESS: s}), 2, seed=0)
    assert picked.indices.tolist() == [0, 1]


def test_each_field_method_reads_only_what_it_declares():
    assert reg.METHODS["clip_score"].needs == (reg.CLIP_SCORE,)
    assert reg.METHODS["semdedup"].needs == (reg.FEATURES,)
    assert reg.METHODS["ifd"].needs == (reg.IFD,)
    assert reg.METHODS["coincide"].needs == (reg.ACTIVATIONS,)
    assert reg.METHODS["less"].needs == (reg.LESS,)
    calls = []
    arrays = {reg.FEATURES: _separated(20, 8, 0), reg.CLIP_SCORE: np.zeros(20), reg.IFD: np.full(20, 0.5),
              reg.ACTIVATIONS: _separated(20, 8, 1), reg.LESS: np.zeros(20), reg.CLEAN: np.ones(20, bool)}
    loaders = {k: (lambda k=k, v=v: calls.append(k) or v) for k, v in arrays.items()}
    for name in ("clip_score", "semdedup", "ifd", "coincide", "less"):
        calls.clear()
        reg.run_method(name, reg.SelectionInputs(20, loaders), 5, seed=0,
                       options=reg.SelectOptions(n_clusters=2, coincide_clusters=2))
        assert set(calls) == set(reg.METHODS[name].needs), name


def test_field_methods_need_both_scoring_stages_and_join_the_compared_grid(tmp_path):
    from selfilter.selection.config import SelectConfig, compared_methods

    with pytest.raises(ValueError, match="field_scorers"):
        SelectConfig(field_methods=["clip_score"], field_scorers=["ifd"])
    with pytest.raises(ValueError, match="unknown methods"):
        SelectConfig(field_methods=["cherry"], field_scorers=["ifd", "less"])
    (tmp_path / "params.yaml").write_text("select:\n  methods: [random, full]\n  field_methods: [less, random]\n"
                                          "  field_scorers: [ifd, less]\n")
    assert compared_methods(tmp_path / "params.yaml") == ["random", "full", "less"]
