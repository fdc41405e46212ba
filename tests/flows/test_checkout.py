"""The deployments' pull step: which checkout a flow run works in."""
import pytest
import yaml

from flow_fixtures import REPO
from selfilter.checkout import CheckoutError, find_checkout, use_checkout


def test_prefect_yaml_pulls_with_this_step():
    doc = yaml.safe_load((REPO / "prefect.yaml").read_text())
    assert doc["pull"] == [{"selfilter.checkout.use_checkout": {}}]


def test_root_env_wins_then_the_folder_the_worker_started_in(tmp_path):
    assert find_checkout({"SELFILTER_ROOT": str(REPO), "PWD": str(tmp_path)}) == REPO.resolve()
    assert find_checkout({"PWD": str(REPO)}) == REPO.resolve()


@pytest.mark.parametrize("env, words", [
    ({}, "$PWD is not set"),
    ({"PWD": "/"}, "started in /, which is not a selfilter checkout"),
    ({"SELFILTER_ROOT": "/nonexistent", "PWD": str(REPO)}, "SELFILTER_ROOT=/nonexistent is not a selfilter checkout"),
])
def test_no_checkout_is_one_line_naming_what_to_set(env, words):
    with pytest.raises(CheckoutError) as e:
        find_checkout(env)
    msg = str(e.value)
    assert words in msg and "SELFILTER_ROOT=$PWD prefect worker start" in msg and "\n" not in msg


def test_the_step_changes_folder_or_exits_with_the_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SELFILTER_ROOT", raising=False)
    monkeypatch.setenv("PWD", str(REPO))
    assert use_checkout() == {"directory": str(REPO.resolve())}
    monkeypatch.setenv("PWD", str(tmp_path))
    with pytest.raises(SystemExit) as e:
        use_checkout()
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "SELFILTER_ROOT" in err
