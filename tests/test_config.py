"""selfilter.config: params read the way DVC writes them."""
from pathlib import Path

from selfilter.config import load_section, parse_yaml
from selfilter.training.config import FinetuneConfig

REPO = Path(__file__).resolve().parents[1]


def test_yaml_12_booleans_only_true_and_false():
    doc = parse_yaml("a: no\nb: 'no'\nc: true\nd: yes\ne: null\nf: off\ng: False\nh:\n")
    assert doc == {"a": "no", "b": "no", "c": True, "d": "yes", "e": None, "f": "off", "g": False, "h": None}


def test_params_rewritten_by_dvc_still_validate(tmp_path):
    """`dvc exp run -S` rewrites params.yaml with DVC's YAML 1.2 dumper (mixed_precision: no,
    unquoted); every section of the committed params must still load from that text."""
    from dvc.utils.serialize import dumps_yaml

    original = parse_yaml((REPO / "params.yaml").read_text())
    rewritten = tmp_path / "params.yaml"
    rewritten.write_text(dumps_yaml(original))
    assert "mixed_precision: no\n" in rewritten.read_text()
    assert parse_yaml(rewritten.read_text()) == original
    assert load_section("finetune", FinetuneConfig, rewritten).mixed_precision == "no"
