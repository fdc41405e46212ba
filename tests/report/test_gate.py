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


def test_gate_passes_only_when_every_check_ran_and_passed(tmp_path):
    assert main(["calibration", _write(tmp_path, ["pass", "pass"])]) == 0


def test_a_skipped_check_is_not_established_never_passed(tmp_path, capsys):
    # the smoke and GPU profiles have one seed: the seed-noise checks are skipped
    assert main(["calibration", _write(tmp_path, ["pass", "skipped"])]) == 3
    err = capsys.readouterr().err
    assert "not established" in err and "skipped c1" in err
    assert main(["calibration", _write(tmp_path, [])]) == 3  # no check at all establishes nothing


def test_gate_missing_file_is_one_line(tmp_path, capsys):
    assert main(["calibration", str(tmp_path / "nope.json")]) == 2
    assert "not found" in capsys.readouterr().err
