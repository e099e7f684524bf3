import json
import os
import stat

import pytest
import torch

from nasfpn.fsio import atomic_torch_save, atomic_write_bytes, atomic_write_text, read_json, read_yaml


@pytest.fixture
def umask():
    """Set the process umask for one test; restore it after."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_writes_content_and_leaves_no_temporary(tmp_path, umask):
    atomic_write_text(tmp_path / "a.txt", "héllo\n")
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    atomic_torch_save({"w": torch.arange(3)}, tmp_path / "c.pt")
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "héllo\n"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert torch.load(tmp_path / "c.pt", weights_only=True)["w"].tolist() == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.bin", "c.pt"]


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_mode_is_what_open_would_give(tmp_path, umask, mask, expected):
    umask(mask)
    atomic_write_text(tmp_path / "new.txt", "x")
    atomic_torch_save([1], tmp_path / "new.pt")
    assert mode(tmp_path / "new.txt") == expected
    assert mode(tmp_path / "new.pt") == expected
    assert os.umask(mask) == mask  # reading the umask did not change it


def test_replaces_existing_file(tmp_path):
    target = tmp_path / "x.json"
    target.write_text("old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new"


def test_failed_torch_save_keeps_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "state.pt"
    atomic_torch_save({"version": 1}, target)
    before = target.read_bytes()
    with pytest.raises(Exception):
        atomic_torch_save({"fn": lambda: 0}, target)  # a lambda does not pickle
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]


def test_write_into_missing_folder_raises_and_creates_nothing(tmp_path):
    with pytest.raises(FileNotFoundError):
        atomic_write_text(tmp_path / "no" / "x.txt", "x")
    assert list(tmp_path.iterdir()) == []


def test_read_json_and_yaml(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"a": [1, 2]}))
    (tmp_path / "a.yaml").write_text("a: [1, 2]\n")
    assert read_json(tmp_path / "a.json") == {"a": [1, 2]}
    assert read_yaml(tmp_path / "a.yaml") == {"a": [1, 2]}


def test_truncated_json_names_the_file(tmp_path):
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"trials": list(range(50))})[:37])
    with pytest.raises(ValueError, match="damaged or not JSON") as err:
        read_json(path, what="the controller state")
    message = str(err.value)
    assert str(path) in message and "the controller state" in message and "\n" not in message


@pytest.mark.parametrize("content, reason", [(b"", "empty file"), (b"\xff\xfe{", "not UTF-8")])
def test_empty_or_binary_json(tmp_path, content, reason):
    path = tmp_path / "x.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=reason):
        read_json(path)


def test_damaged_yaml_names_the_file_in_one_line(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("search:\n  trials: [1, 2\n")  # cut off inside a list
    with pytest.raises(ValueError, match="damaged or not YAML") as err:
        read_yaml(path)
    assert str(path) in str(err.value) and "line" in str(err.value) and "\n" not in str(err.value)


def test_missing_file_is_still_an_oserror(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_json(tmp_path / "absent.json")
