import json

from selfilter.cli import main


def _write(tmp_path, statuses):
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps({"checks": [{"name": f"c{i}", "status": s, "detail": "d"}
                                           for i, s in enumerate(statuses)]}))
    return str(path)


def test_gate_fails_on_any_failed_check(tmp_path, capsys):
    assert main(["calibration", _write(tmp_path, ["pass", "fail", "skip"])]) == 1
    assert "1 of 3 checks FAILED" in capsys.readouterr().err


def test_gate_passes_when_no_check_failed(tmp_path):
    assert main(["calibration", _write(tmp_path, ["pass", "skip"])]) == 0


def test_gate_missing_file_is_one_line(tmp_path, capsys):
    assert main(["calibration", str(tmp_path / "nope.json")]) == 2
    assert "not found" in capsys.readouterr().err
