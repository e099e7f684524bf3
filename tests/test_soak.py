"""scripts/soak_resume.py, small: a tiny real search SIGKILLed three times (once at a random
moment after launch, once mid-trial, once right after a ledger line) and resumed each time."""
import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "soak_resume.py"


def load_soak():
    spec = importlib.util.spec_from_file_location("soak_resume", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.ray
def test_three_sigkills_lose_nothing_and_train_nothing_twice(tmp_path):
    out = tmp_path / "soak.json"
    rc = load_soak().main(["--kills", "3", "--seed", "0", "--trials", "4", "--baselines", "fpn",
                           "--out", str(tmp_path / "soak"), "--json", str(out)])
    result = json.loads(out.read_text())
    assert result["lost"] == 0, result["lost_lines"]
    assert result["trained_twice"] == 0, result["trained_twice_keys"]
    assert result["search_lines"] == result["budget"] == 4
    assert result["confirmation"]["complete"], result["confirmation"]
    assert result["confirmation"]["planned"] == 4  # (1 baseline + top 1 cell) x 2 seeds
    assert result["final_rc"] == 0 and result["lock_released"] and not result["leftover_processes"]
    assert result["kills"] == 3, result["events"]
    assert rc == 0, result["checks"]
