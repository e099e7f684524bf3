"""The benchmark scripts refuse bad input as the command line does: exit 2 with the bad argument
named, before their output folder or anything in it is written."""
import importlib
import json
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.fixture
def script(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPTS))

    def run(name: str, *argv: str):
        monkeypatch.setattr(sys, "argv", [f"{name}.py", *argv])
        with pytest.raises(SystemExit) as stopped:
            importlib.import_module(name).main()
        return stopped.value.code

    return run


@pytest.mark.parametrize("argv, message", [
    (["--proxy", "[1]"], "--proxy: a YAML mapping of proxy fields, got '[1]'"),
    (["--proxy", "{stepz: 3}"], "proxy: unknown key(s) ['stepz']"),
    (["--val-fraction", "2"], "--val-fraction: a number in (0, 1), got 2.0"),
    (["--factor", "0"], "--factor: at least 1, got 0"),
    (["--concurrent", "0"], "--concurrent: at least 1, got 0"),
    (["--necks", "0"], "--necks: at least 1, got 0"),
])
def test_bench_fidelity_refuses_bad_input_writing_nothing(script, tmp_path, capsys, argv, message):
    out = tmp_path / "fidelity"
    assert script("bench_fidelity", *argv, "--out", str(out), "--report-only") == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_bench_fidelity_refuses_a_folder_of_another_split(script, tmp_path, capsys):
    out = tmp_path / "fidelity"
    out.mkdir()
    saved = {"necks": [], "recipes": {}, "split": {"data": "builtin", "val_fraction": 0.2}}
    (out / "experiment.json").write_text(json.dumps(saved))
    assert script("bench_fidelity", "--val-fraction", "0.4", "--out", str(out), "--report-only") == 2
    assert "holds runs of {'data': 'builtin', 'val_fraction': 0.2}" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["experiment.json"]


@pytest.mark.parametrize("recorded", ["split.json", "a ledger from before splits were recorded"])
def test_bench_proxy_refuses_a_folder_of_another_split(script, tmp_path, capsys, recorded):
    folder = tmp_path / "detectors" / "builtin"
    if recorded == "split.json":
        folder.mkdir(parents=True)
        (folder / "split.json").write_text(json.dumps({"data": "builtin", "val_fraction": 0.2}))
    else:  # its runs were made at the default of their time, 0.2
        (folder / "retinanet").mkdir(parents=True)
        (folder / "retinanet" / "ledger.jsonl").write_text("")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert script("bench_proxy", "--detectors", "retinanet", "--val-fraction", "0.4",
                  "--out", str(tmp_path / "detectors")) == 2
    assert "holds runs of {'data': 'builtin', 'val_fraction': 0.2}, not {'data': 'builtin', 'val_fraction': 0.4}: " \
           "give --val-fraction 0.2" in capsys.readouterr().err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_bench_proxy_refuses_an_unknown_detector_writing_nothing(script, tmp_path, capsys):
    out = tmp_path / "detectors"
    assert script("bench_proxy", "--detectors", "retinanet", "nope", "--out", str(out)) == 2
    assert "--detectors nope: proxy.detector: one of ['faster_rcnn', 'fcos', 'retinanet'], got 'nope'" \
        in capsys.readouterr().err
    assert not out.exists()


def test_a_folder_records_the_split_as_resolved(script, tmp_path):
    """The built-in data keeps 0.2 by default, so folders measured before the default grew on
    small sets still match; a given share is recorded as given."""
    from bench_fidelity import data_split, split_problem

    from nasfpn.task import DataConfig

    assert data_split("builtin", DataConfig()) == {"data": "builtin", "val_fraction": 0.2}
    assert data_split("builtin", DataConfig(val_fraction=0.4)) == {"data": "builtin", "val_fraction": 0.4}
    annotations = tmp_path / "small.json"
    annotations.write_text(json.dumps({"images": [{"id": i} for i in range(364)]}))
    small = data_split("bccd", DataConfig(annotations=str(annotations), images=str(tmp_path)))
    assert small == {"data": "bccd", "val_fraction": 0.4}
    assert split_problem(tmp_path, None, small) == split_problem(tmp_path, small, small) == ""
    assert "holds runs of" in split_problem(tmp_path, {"data": "bccd", "val_fraction": 0.2}, small)
