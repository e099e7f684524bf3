import json
import subprocess
import sys

import pytest
import torch

from nasfpn import build_neck, load_genotype
from nasfpn.cli import main
from nasfpn.export import load_exported


def nasfpn_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "nasfpn.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_export_and_draw_from_the_shell(tmp_path):
    done = nasfpn_cli("export", "fpn", "-o", tmp_path / "my_neck.py", "--in-channels", "8,16,32", "--width", "8")
    assert done.returncode == 0, done.stderr
    neck = load_exported(tmp_path / "my_neck.py")
    neck.load_state_dict(build_neck(load_genotype("fpn"), [8, 16, 32], 8).state_dict())
    done = nasfpn_cli("export", "bifpn", "-o", tmp_path / "deep.py", "--in-channels", "8,16,32", "--width", "8",
                      "--repeats", "5")
    assert done.returncode == 0, done.stderr
    deep = build_neck(load_genotype("bifpn").replace(repeats=5), [8, 16, 32], 8)
    load_exported(tmp_path / "deep.py").load_state_dict(deep.state_dict())  # five cells, not BiFPN's three
    done = nasfpn_cli("export", "fpn", "-o", tmp_path / "none.py", "--repeats", "0")
    assert done.returncode == 2 and "--repeats 0" in done.stderr and not (tmp_path / "none.py").exists()
    done = nasfpn_cli("draw", "bifpn", "-o", tmp_path / "cell.svg")
    assert done.returncode == 0, done.stderr
    assert "<svg" in (tmp_path / "cell.svg").read_text()


@pytest.mark.parametrize("content, message", [
    ("levels: [3\n", "not valid YAML: expected ',' or ']'"),
    ("levels: [3, 4, 5]\nnodes: [{inputs: [P9], level: 3}]\noutputs: {3: n0, 4: P4, 5: P5}\n",
     "node n0: input 'P9' does not exist"),
    ("levels: [3, 4, 5]\nnodes: [{inputs: [P3], level: 3, op: magic}]\noutputs: {3: n0, 4: P4, 5: P5}\n",
     "node n0: op: unknown value 'magic'"),
    ("42\n", "a genotype must be a mapping"),
])
@pytest.mark.parametrize("command", ["export", "draw"])
def test_malformed_genotype_exits_2_with_one_line(tmp_path, capsys, content, message, command):
    bad = tmp_path / "bad.yaml"
    bad.write_text(content)
    out = tmp_path / ("neck.py" if command == "export" else "cell.png")
    assert main([command, str(bad), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert message in err and "bad.yaml" in err
    assert not out.exists()  # nothing half-written


def test_malformed_genotype_from_the_shell(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("levels: [3, 4, 5]\nnodes: []\noutputs: {}\n")
    done = nasfpn_cli("export", bad, "-o", tmp_path / "neck.py")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip() == f"nasfpn export: error: {bad}: nodes: the node list is empty"


def test_usage_errors(tmp_path, capsys):
    assert main(["export", "fpn", "-o", str(tmp_path / "n.py"), "--in-channels", "8,x"]) == 2
    assert "--in-channels '8,x'" in capsys.readouterr().err
    assert main(["export", "fpn", "-o", str(tmp_path / "n.txt")]) == 2
    assert main(["draw", "fpn", "-o", str(tmp_path / "cell.gif")]) == 2
    assert ".gif" in capsys.readouterr().err
    assert main(["info", "no_such_neck"]) == 2
    assert "shipped: ['augfpn', 'bifpn', 'fpn', 'nasfpn', 'panet', 'rfp']" in capsys.readouterr().err
    assert main(["export", "fpn", "-o", str(tmp_path / "n.py"), "--class-name", "1bad"]) == 2
    assert not (tmp_path / "n.py").exists()
    assert main([]) == 2


def test_info(capsys):
    assert main(["info", "bifpn", "--in-channels", "40,112,320"]) == 0
    out = capsys.readouterr().out
    assert "params      194,361" in out and "in spaces   wide" in out


def test_onnx_with_weights(tmp_path, capsys):
    pytest.importorskip("onnx")
    neck = build_neck(load_genotype("fpn"), [8, 16, 32], 8)
    torch.save(neck.state_dict(), tmp_path / "w.pt")
    args = ["export", "fpn", "-o", str(tmp_path / "n.py"), "--in-channels", "8,16,32", "--width", "8",
            "--onnx", str(tmp_path / "n.onnx")]
    assert main(args + ["--weights", str(tmp_path / "w.pt")]) == 0
    assert (tmp_path / "n.onnx").stat().st_size > 1000
    torch.save({"nope": torch.zeros(1)}, tmp_path / "bad.pt")
    assert main(args + ["--weights", str(tmp_path / "bad.pt")]) == 2
    assert "not a state dict of this neck" in capsys.readouterr().err


def test_sample(tmp_path):
    assert main(["sample", "--space", "nasfpn", "-n", "2", "--out", str(tmp_path), "--in-channels", "8,16,32",
                 "--width", "8", "--image-size", "64"]) == 0
    table = (tmp_path / "samples.md").read_text()
    assert "sample-00" in table and "sample-01" in table and "NAS-FPN" in table
    for folder in ["sample-00", "fpn"]:
        for name in ["genotype.yaml", "cell.png", "neck.py"]:
            assert (tmp_path / folder / name).exists()


def test_version(capsys):
    from nasfpn import __version__

    with pytest.raises(SystemExit) as done:
        main(["--version", "search"])  # before anything else, as argparse's version action does
    assert done.value.code == 0
    assert capsys.readouterr().out == f"nasfpn {__version__}\n"
    done = nasfpn_cli("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"nasfpn {__version__}" and done.stderr == ""


def coco_with_bad_boxes(tmp_path, bad):
    """One 32 x 24 image and ``bad`` boxes lying outside it."""
    from PIL import Image

    Image.new("RGB", (32, 24)).save(tmp_path / "a.png")
    data = {"images": [{"id": 1, "file_name": "a.png", "width": 32, "height": 24}],
            "annotations": [{"id": k, "image_id": 1, "category_id": 1, "bbox": [40, 0, 5, 5]}
                            for k in range(1, bad + 1)],
            "categories": [{"id": 1, "name": "cat"}]}
    (tmp_path / "data.json").write_text(json.dumps(data))
    return tmp_path / "data.json"


@pytest.mark.parametrize("bad", [1, 3, 12])
def test_check_data_lists_up_to_ten_problems(tmp_path, capsys, bad):
    annotations = coco_with_bad_boxes(tmp_path, bad)
    assert main(["check-data", str(annotations), "--images", str(tmp_path)]) == 2
    lines = capsys.readouterr().err.rstrip("\n").split("\n")
    problem = "annotation {} (image 1, a.png): box [x, y, w, h] = [40, 0, 5, 5] lies outside the 32x24 image"
    if bad == 1:
        assert lines == [f"nasfpn check-data: error: {problem.format(1)}"]
    elif bad == 3:
        assert lines == [f"nasfpn check-data: error: 3 problems in {annotations}:"] + \
            [f"  {problem.format(k)}" for k in (1, 2, 3)]
    else:
        assert lines == [f"nasfpn check-data: error: 12 problems in {annotations}, the first 10:"] + \
            [f"  {problem.format(k)}" for k in range(1, 11)] + ["  ... and 2 more"]
