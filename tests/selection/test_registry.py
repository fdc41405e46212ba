"""Method registry: names, entitlements, and what each method reads."""
import numpy as np
import pytest

from selfilter.selection import registry as reg

N = 60


def _inputs(calls):
    rng = np.random.default_rng(0)
    arrays = {reg.DIFFICULTY_SCORES: rng.normal(size=N), reg.DIFFICULTY_CLIP: rng.normal(size=N),
              reg.FEATURES: rng.normal(size=(N, 8)).astype(np.float32),
              reg.JUDGE: rng.integers(0, 11, N).astype(float), reg.EL2N: rng.random(N),
              reg.CLEAN: rng.random(N) < 0.7, reg.SCENE_SIZE: rng.integers(1, 7, N), reg.CLIP_SCORE: rng.random(N),
              reg.IFD: np.where(rng.random(N) < 0.1, np.nan, rng.random(N) * 1.5),
              reg.ACTIVATIONS: rng.normal(size=(N, 8)).astype(np.float32), reg.LESS: rng.normal(size=N)}

    def loader(name):
        def load():
            calls.append(name)
            return arrays[name]
        return load

    return reg.SelectionInputs(N, {k: loader(k) for k in arrays}), arrays


def test_unknown_method_lists_the_valid_names():
    with pytest.raises(KeyError) as e:
        reg.get_method("self_filterr")
    for name in ["self_filter_scores", "random", "oracle_clean", "prototypicality"]:
        assert name in str(e.value)


def test_names_and_the_control_flag():
    assert set(reg.METHODS) == {"self_filter_scores", "self_filter_clip", "self_filter_nodiv",
                                "self_filter_easiest", "self_filter_guarded", "random", "el2n", "alpagasus",
                                "prototypicality", "full", "oracle_clean", "oracle_hard",
                                "clip_score", "semdedup", "ifd", "coincide", "less"}
    assert [m.name for m in reg.METHODS.values() if m.control] == ["oracle_clean", "oracle_hard"]
    assert reg.METHODS["full"].budgets == (1.0,)


@pytest.mark.parametrize("name", list(reg.METHODS))
def test_each_method_reads_only_what_it_declares(name):
    calls = []
    inputs, _ = _inputs(calls)
    n = N if name == "full" else 12
    picked = reg.run_method(name, inputs, n, seed=0)
    assert len(picked.indices) == n == len(set(picked.indices.tolist()))
    assert set(calls) <= set(reg.METHODS[name].needs)
    assert (reg.CLEAN in calls) == name.startswith("oracle_")  # only the controls see hidden labels
    assert (reg.SCENE_SIZE in calls) == (name == "oracle_hard")


def test_undeclared_input_is_refused():
    inputs, _ = _inputs([])
    with pytest.raises(reg.InputNotAllowed, match="clean"):
        inputs.restricted(frozenset({reg.FEATURES})).get(reg.CLEAN)


def test_self_filter_variants():
    calls = []
    inputs, arr = _inputs(calls)
    nodiv = reg.run_method("self_filter_nodiv", inputs, 10, 0)
    np.testing.assert_array_equal(nodiv.indices, np.argsort(-arr[reg.DIFFICULTY_CLIP], kind="stable")[:10])
    easiest = reg.run_method("self_filter_easiest", inputs, 1, 0)
    assert easiest.indices[0] == np.argmin(arr[reg.DIFFICULTY_CLIP])
    a = reg.run_method("self_filter_scores", inputs, 10, 0)
    np.testing.assert_array_equal(a.indices, reg.run_method("self_filter_scores", inputs, 10, 7).indices)
    assert a.indices[0] == np.argmax(arr[reg.DIFFICULTY_SCORES])


# Every option a method could read, each set away from its default (a run with these must pick
# exactly what a run with the defaults picks, for every method that does not declare the option).
_PERTURBED = dict(k_nearest=3, gamma=0.25, penalty="positive", device="cpu", backend="dense",
                  precision="float32", n_clusters=3, semdedup_threshold=0.5, coincide_clusters=3,
                  coincide_temperature=2.0, coincide_kernel_width=0.3)


@pytest.mark.parametrize("name", list(reg.METHODS))
def test_undeclared_options_never_change_the_picks(name):
    """What select_params writes per method is all its picks depend on: change every option it
    does not declare and the picks stay bit-identical (its DVC stage may rightly be skipped)."""
    method = reg.METHODS[name]
    n = N if name == "full" else 12
    base = reg.SelectOptions(n_clusters=4, coincide_clusters=4)
    other = reg.SelectOptions(**{**{k: getattr(base, k) for k in method.options},
                                 **{k: v for k, v in _PERTURBED.items() if k not in method.options}})
    a = reg.run_method(name, _inputs([])[0], n, seed=0, options=base)
    b = reg.run_method(name, _inputs([])[0], n, seed=0, options=other)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.scores, b.scores)


def test_a_declared_option_does_change_the_picks():
    # the check above could pass by methods ignoring options altogether: gamma matters to Self-Filter
    inputs = _inputs([])[0]
    a = reg.run_method("self_filter_scores", inputs, 30, 0, reg.SelectOptions(gamma=1.0, k_nearest=20))
    b = reg.run_method("self_filter_scores", inputs, 30, 0, reg.SelectOptions(gamma=50.0, k_nearest=20))
    assert a.indices.tolist() != b.indices.tolist()


def test_reading_an_undeclared_option_is_refused():
    view = reg.DeclaredOptions(reg.SelectOptions(), ("gamma",), "m")
    assert view.gamma == 1.0 and view.show_progress is False
    with pytest.raises(reg.OptionNotDeclared, match=r"method 'm' read select.k_nearest.*\['gamma'\]"):
        view.k_nearest
