"""The search end to end with real Ray: resume after a driver SIGKILL, failing trials, a worker
killed mid-trial; and the Ray-free parts (config, ledger, report, reward)."""
import dataclasses
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from nasfpn import load_genotype
from nasfpn.cli import main
from nasfpn.search.config import search_config
from nasfpn.search.ledger import Ledger
from nasfpn.search.report import build_report
from nasfpn.search.trainable import reward_of

TINY = {
    "data": {"synthetic_images": 24},
    "backbone": {"warmup_steps": 2},
    "proxy": {"image_size": 128, "width": 8, "head_depth": 1, "steps": 40, "batch_size": 4, "eval_every": 20,
              "warmup_steps": 2},
    "space": "wide",
    "controller": "evolution",
    "search": {"trials": 7, "concurrent": 2},
}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def start_search(config: dict, out: Path, cache: Path, *extra: str) -> subprocess.Popen:
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "NASFPN_CACHE": str(cache)}
    return subprocess.Popen([sys.executable, "-m", "nasfpn.cli", "search", "--config", str(path), "--out", str(out),
                             *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def finish(process: subprocess.Popen, timeout: float = 600) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output
    return output


def entries(out: Path) -> list:
    return [json.loads(line) for line in (out / "ledger.jsonl").read_text().splitlines()]


def wait_for(predicate, timeout: float = 300, every: float = 0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return False


def test_search_survives_a_driver_sigkill(tmp_path, cache):
    out = tmp_path / "exp"
    process = start_search(TINY, out, cache)
    ledger = out / "ledger.jsonl"
    assert wait_for(lambda: ledger.is_file() and len(ledger.read_text().splitlines()) >= 3)
    os.killpg(process.pid, signal.SIGKILL)  # the driver and the Ray it started, at once
    process.wait()
    before = ledger.read_text().splitlines()
    assert 3 <= len(before) < 7, "the search should still have been running"
    done = subprocess.run([sys.executable, "-m", "nasfpn.cli", "search", "--resume", str(out)], capture_output=True,
                          text=True, env={**os.environ, "NASFPN_CACHE": str(cache)}, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    after = ledger.read_text().splitlines()
    assert len(after) == 7                      # exactly the budget
    assert after[:len(before)] == before        # nothing lost, nothing rewritten
    trained = [e["trained_hash"] for e in entries(out) if not e["answered_from_ledger"]]
    assert all(trained) and len(trained) == len(set(trained))  # nothing paid twice, as the proxy trains it
    baselines = {e["baseline"] for e in entries(out) if e["baseline"]}
    assert baselines == {"fpn", "panet", "bifpn", "nasfpn"}
    for name in ["config.yaml", "leaderboard.md", "trials.csv", "best.yaml", "best_neck.py", "plots/reward.png",
                 "plots/ap_vs_macs.png", "drawings/best.png", "drawings/fpn.png", "experiment.json"]:
        assert (out / name).is_file(), name
    assert "Traceback" not in done.stdout + done.stderr
    assert "[7/7]" in done.stdout
    # The folder rebuilds its report from the ledger alone.
    (out / "leaderboard.md").unlink()
    assert main(["report", str(out)]) == 0 and (out / "leaderboard.md").is_file()


def test_failing_trials_are_recorded_retried_and_do_not_stop_the_search(tmp_path, cache):
    config = {**TINY, "proxy": {**TINY["proxy"], "max_loss": 1e-9},
              "search": {"trials": 3, "concurrent": 2, "baselines": [], "retries": 1}}
    out = tmp_path / "failing"
    output = finish(start_search(config, out, cache))
    rows = entries(out)
    assert len(rows) == 3 and all(e["status"] == "failed" for e in rows)
    assert all("max_loss" in e["error"] for e in rows)
    assert all(e["attempts"] == 2 for e in rows)  # retried once, then recorded
    assert "failed" in output and "Failed trials" in (out / "leaderboard.md").read_text()


def test_a_worker_killed_mid_trial_is_retried(tmp_path, cache):
    config = {**TINY, "proxy": {**TINY["proxy"], "steps": 400, "eval_every": 200},
              "search": {"trials": 1, "concurrent": 1, "baselines": ["fpn"], "retries": 2}}
    out = tmp_path / "killed"
    process = start_search(config, out, cache)

    def worker():
        found = subprocess.run(["pgrep", "-s", str(process.pid), "-f", "ImplicitFunc"], capture_output=True, text=True)
        pids = [int(p) for p in found.stdout.split()]
        return pids[0] if pids else None

    assert wait_for(lambda: worker() is not None, timeout=300)
    time.sleep(3)  # mid-trial
    os.kill(worker(), signal.SIGKILL)
    finish(process)
    rows = entries(out)
    assert len(rows) == 1 and rows[0]["status"] == "ok" and rows[0]["attempts"] >= 2


def test_a_search_joins_a_running_cluster(tmp_path, cache):
    """``--address HOST:PORT`` against a head started by ``ray start`` with token authentication,
    as scripts/cluster/start_head.sh does: the driver must send the token by itself."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "RAY_AUTH_TOKEN": secrets.token_hex(16), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_AUTH_MODE", None)
    ray = str(Path(sys.executable).with_name("ray"))
    head = subprocess.Popen([ray, "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
                             "--node-ip-address=127.0.0.1", "--include-dashboard=false", "--disable-usage-stats"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        # no ASHA: with two trials it may stop the searched one; this test is about joining
        config = {**TINY, "search": {"trials": 2, "concurrent": 2, "baselines": ["fpn"]}, "scheduler": {"name": "none"}}
        out = tmp_path / "cluster"
        path = tmp_path / "cluster.yaml"
        path.write_text(yaml.safe_dump(config))
        deadline = time.time() + 120
        while True:  # the head takes a few seconds to listen
            done = subprocess.run([sys.executable, "-m", "nasfpn.cli", "search", "--config", str(path), "--out",
                                   str(out), "--address", f"127.0.0.1:{port}"], capture_output=True, text=True,
                                  env={**env, "NASFPN_CACHE": str(cache)}, timeout=600)
            if done.returncode == 0 or time.time() > deadline:
                break
            shutil.rmtree(out, ignore_errors=True)
            time.sleep(2)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"Ray: cluster at 127.0.0.1:{port}, 1 node(s), 2 CPU" in done.stdout
        assert [e["status"] for e in entries(out)] == ["ok", "ok"]
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=60)


def test_config_errors_name_the_key(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"unknown section\(s\) \['serach'\]"):
        search_config({"serach": {}})
    with pytest.raises(ValueError, match=r"search: unknown key\(s\) \['trails'\]; valid keys are"):
        search_config({"search": {"trails": 3}})
    with pytest.raises(ValueError, match=r"proxy: unknown key\(s\)"):
        search_config({"proxy": {"lr_max": 3}})
    bad = tmp_path / "bad.yaml"
    bad.write_text("search: {trails: 3}\n")
    assert main(["search", "--config", str(bad), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "search: unknown key(s) ['trails']" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()
    assert main(["search", "--resume", str(tmp_path)]) == 2
    assert search_config({}).search.trials >= 5  # the quickstart default


def test_ledger_ignores_a_torn_last_line(tmp_path):
    path = tmp_path / "ledger.jsonl"
    ledger = Ledger(path)
    ledger.append({"hash": "a", "status": "ok", "reward": 1.0})
    with open(path, "a") as f:
        f.write('{"hash": "b", "sta')
    again = Ledger(path)
    assert len(again) == 1 and again.find("a")["reward"] == 1.0 and again.find("b") is None


def test_report_from_a_ledger_alone(tmp_path):
    ledger = Ledger(tmp_path / "ledger.jsonl")
    for i, (name, ap) in enumerate([("fpn", 0.2), (None, 0.25), (None, 0.1)], 1):
        genotype = load_genotype(name or "panet").replace(name="")
        ledger.append({"trial": i, "hash": f"{i}" * 12, "genotype": genotype.to_dict(), "status": "ok", "reward": ap,
                       "ap": ap, "params": 100 * i, "macs": 1e6 * i, "baseline": name, "controller": "ppo"})
    ledger.append({"trial": 4, "hash": "4" * 12, "genotype": load_genotype("bifpn").to_dict(), "status": "failed",
                   "reward": 0.0, "ap": 0.0, "error": "loss nan at step 3", "baseline": None})
    board = build_report(tmp_path).read_text()
    assert "Best searched cell `222222222222` (AP 0.250) beats the FPN baseline (AP 0.200) under this recipe, " \
           "one seed each." in board
    assert "loss nan at step 3" in board
    assert (tmp_path / "best.yaml").is_file() and (tmp_path / "plots" / "reward.png").is_file()


def test_report_calls_a_gap_within_seed_noise_no_win(tmp_path):
    ledger = Ledger(tmp_path / "ledger.jsonl")
    for i, (name, ap) in enumerate([("fpn", 0.301), (None, 0.302)], 1):
        ledger.append({"trial": i, "hash": f"{i}" * 12, "genotype": load_genotype(name or "panet").to_dict(),
                       "status": "ok", "reward": ap, "ap": ap, "params": 1, "macs": 1e6, "baseline": name})
    board = build_report(tmp_path).read_text()
    assert "beats the FPN baseline (AP 0.301) under this recipe, one seed each: a gap of +0.001 AP" in board
    assert "before drawing a conclusion" in board


def test_report_names_the_best_searched_cell_when_a_baseline_wins(tmp_path):
    ledger = Ledger(tmp_path / "ledger.jsonl")
    (tmp_path / "experiment.json").write_text(json.dumps({"channels": {"3": 8, "4": 16, "5": 32}, "width": 8}))
    for i, (name, ap) in enumerate([("fpn", 0.3), (None, 0.2)], 1):
        ledger.append({"trial": i, "hash": f"{i}" * 12, "genotype": load_genotype(name or "panet").to_dict(),
                       "status": "ok", "reward": ap, "ap": ap, "params": 1, "macs": 1e6, "baseline": name})
    board = build_report(tmp_path).read_text()
    assert "Best searched cell: `222222222222` (AP 0.200)" in board
    assert load_genotype(tmp_path / "best_searched.yaml").hash() == load_genotype("panet").hash()
    assert load_genotype(tmp_path / "best.yaml").hash() == load_genotype("fpn").hash()
    assert (tmp_path / "best_searched_neck.py").is_file() and (tmp_path / "drawings" / "best_searched.png").is_file()
    ledger.append({"trial": 3, "hash": "3" * 12, "genotype": load_genotype("bifpn").to_dict(), "status": "ok",
                   "reward": 0.4, "ap": 0.4, "params": 1, "macs": 1e6, "baseline": None})
    board = build_report(tmp_path).read_text()  # a searched cell is now the best: no stale best_searched files
    assert "Best searched cell:" not in board and not list(tmp_path.glob("best_searched*"))
    assert not (tmp_path / "drawings" / "best_searched.png").exists()


def test_a_cell_the_proxy_trains_as_a_baseline_is_answered_from_the_ledger(tmp_path):
    """The wide space's FPN cell (2 repeats) is the FPN baseline (1) once the proxy caps repeats
    at 1: found in the ledger by the neck trained, never trained twice."""
    from nasfpn.search.driver import trained_hash
    from nasfpn.space import load_space
    from nasfpn.train import ProxyConfig

    proxy = ProxyConfig()
    wide = load_space("wide")
    baseline = load_genotype("fpn").replace(width=proxy.width)
    searched = wide.decode(wide.encode(baseline))
    assert searched.hash() != baseline.hash() and searched.repeats == 2
    assert trained_hash(searched, proxy) == trained_hash(baseline, proxy)
    assert trained_hash(searched, dataclasses.replace(proxy, max_repeats=None)) != trained_hash(baseline, proxy)
    ledger = Ledger(tmp_path / "ledger.jsonl")
    ledger.append({"trial": 1, "hash": baseline.hash(), "trained_hash": trained_hash(baseline, proxy),
                   "genotype": baseline.to_dict(), "status": "ok", "reward": 0.3, "ap": 0.3, "baseline": "fpn"})
    assert ledger.find(searched.hash()) is None
    assert ledger.find(searched.hash(), trained_hash(searched, proxy))["reward"] == 0.3


def test_cost_aware_reward():
    assert reward_of(0.3, 2e9, None, -0.07) == 0.3
    assert reward_of(0.3, 2e9, 1e9, -0.07) == pytest.approx(0.3 * 2 ** -0.07)
    assert reward_of(0.3, 5e8, 1e9, -0.07) > 0.3
