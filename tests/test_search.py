"""The search end to end with real Ray: resume after a driver SIGKILL, failing trials, a worker
killed mid-trial; and the Ray-free parts (config, ledger, report, reward)."""
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
from nasfpn.search.config import command_line_config, load_search_config, search_config
from nasfpn.search.confirm import confirm_proxy, recipe_name
from nasfpn.search.ledger import Ledger
from nasfpn.search.records import SEARCH, Candidate, TrialRecord
from nasfpn.search.report import build_report
from nasfpn.search.trainable import reward_of
from nasfpn.train import ProxyConfig

TINY = {
    "data": {"synthetic_images": 24},
    "backbone": {"name": "resnet18", "warmup_steps": 2},  # the warm-up path, whatever is installed
    "proxy": {"image_size": 128, "width": 8, "head_depth": 1, "steps": 40, "batch_size": 4, "eval_every": 20,
              "warmup_steps": 2},
    "space": "wide",
    "controller": "evolution",
    "search": {"trials": 7, "concurrent": 2},
    "confirm": {"seeds": 0},  # the tests of the confirmation turn it on
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


@pytest.mark.ray
def test_search_survives_a_driver_sigkill(tmp_path, cache):
    out = tmp_path / "exp"
    # Confirmed as the quickstart confirms: under the search's own recipe, so seed 0 is each neck's search run.
    process = start_search({**TINY, "confirm": {"seeds": 2, "steps": TINY["proxy"]["steps"]}}, out, cache)
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
    assert sum(e["stage"] != "confirm" for e in entries(out)) == 7  # exactly the budget
    assert after[:len(before)] == before        # nothing lost, nothing rewritten
    confirm = [e for e in entries(out) if e["stage"] == "confirm"]
    assert all(e["recipe"] == "search" for e in confirm)
    assert sorted((e["baseline"], e["seed"]) for e in confirm if e["baseline"]) == \
        [("bifpn", 1), ("fpn", 1), ("nasfpn", 1), ("panet", 1)]  # seed 0: their search runs
    trained = [(e["trained_hash"], e["seed"], e["recipe"]) for e in entries(out) if not e["answered_from_ledger"]]
    assert all(t[0] for t in trained) and len(trained) == len(set(trained))  # nothing paid twice, as the proxy trains it
    baselines = {e["baseline"] for e in entries(out) if e["baseline"]}
    assert baselines == {"fpn", "panet", "bifpn", "nasfpn"}
    for name in ["config.yaml", "leaderboard.md", "trials.csv", "best.yaml", "best_neck.py", "plots/reward.png",
                 "plots/ap_vs_macs.png", "drawings/best.png", "drawings/fpn.png", "experiment.json"]:
        assert (out / name).is_file(), name
    assert "Traceback" not in done.stdout + done.stderr
    assert "[search 7/7]" in done.stdout
    # The search's leaderboard is written before the confirmation starts, and again at the end.
    said = "(the search's); the confirmation follows: "
    assert done.stdout.index(said) < done.stdout.index("[confirm ")
    assert f"{said}{len(confirm)} trials (" in done.stdout  # the others (seed 0) are the search's runs
    assert "## Confirmed ranking" in (out / "leaderboard.md").read_text()
    # The folder rebuilds its report from the ledger alone.
    (out / "leaderboard.md").unlink()
    assert main(["report", str(out)]) == 0 and (out / "leaderboard.md").is_file()


@pytest.mark.ray
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


@pytest.mark.ray
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


@pytest.mark.ray
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
    defaults = search_config({})  # the standard search
    assert (defaults.search.trials, defaults.search.seeds, defaults.confirm.top_k) == (12, 1, 1)
    assert not hasattr(defaults.search, "dedupe")
    with pytest.raises(ValueError, match=r"search: unknown key\(s\) \['dedupe'\]"):
        search_config({"search": {"dedupe": True}})
    with pytest.raises(ValueError, match=r"confirm.seeds: must be 0 or more"):
        search_config({"confirm": {"seeds": -1}})


def record(trial, name, ap, *, genotype=None, status="ok", seed=0, recipe=SEARCH, stage=None, error=None,
           proxy=ProxyConfig()):
    """A ledger record as the driver writes it (through the record type, so a format change shows)."""
    genotype = genotype or load_genotype(name)
    candidate = Candidate.of(genotype, proxy, seed=seed, recipe=recipe, baseline=name if stage != "search" else None,
                             stage=stage or ("baseline" if name else "search"))
    return TrialRecord.finished(trial, candidate, status, {"ap": ap, "reward": ap, "params": 100 * trial,
                                                           "macs": 1e6 * trial, "seconds": 10.0}, error=error)


def test_no_settings_run_the_quickstart_and_any_setting_the_standard_search(tmp_path, capsys):
    standard = search_config({})
    quickstart, chosen = command_line_config(None, {})
    assert chosen and quickstart == search_config(load_search_config("quickstart"))
    assert (quickstart.search.trials, quickstart.confirm.top_k, quickstart.confirm.seeds) == (8, 1, 3)
    flagged, chosen = command_line_config(None, {"trials": 6})  # a flag alone: the defaults under it
    assert not chosen and flagged == search_config({"search": {"trials": 6}})
    named, chosen = command_line_config("quickstart", {"steps": 300})  # the quickstart with a flag over it
    assert not chosen and (named.proxy.steps, named.search.trials) == (300, 8)
    # its confirmation trains under the search's own recipe: seed 0 of each neck is its search run
    assert recipe_name(confirm_proxy(quickstart.proxy, quickstart.confirm), quickstart.proxy) == SEARCH
    assert standard.proxy.batch_size == 8
    with pytest.raises(ValueError, match=r"'quickstar' is neither a file nor a shipped config; shipped: \[.*'quickstart'"):
        command_line_config("quickstar", {})
    assert main(["search", "--config", "quickstar", "--out", str(tmp_path / "x")]) == 2
    assert "shipped: [" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_report_from_a_ledger_alone(tmp_path):
    ledger = Ledger(tmp_path / "ledger.jsonl")
    ledger.append(record(1, "fpn", 0.2))
    ledger.append(record(2, None, 0.25, genotype=load_genotype("panet").replace(name="")))
    ledger.append(record(3, "nasfpn", 0.3))
    ledger.append(record(4, None, 0.0, genotype=load_genotype("bifpn"), status="failed", error="loss nan at step 3"))
    board = build_report(tmp_path).read_text()
    # the best searched cell is compared with the best baseline (nasfpn), not with FPN alone
    assert "(AP 0.250) against the best baseline, `nasfpn` (AP 0.300): -0.050 AP on one seed each; not a verdict " \
           "until confirmed over seeds" in board
    assert "loss nan at step 3" in board
    assert (tmp_path / "best.yaml").is_file() and (tmp_path / "plots" / "reward.png").is_file()
    rows = (tmp_path / "trials.csv").read_text().splitlines()
    assert len(rows) == 5 and rows[0].startswith("trial,name,hash,trained_hash,stage,recipe,seed,status")


def test_report_calls_a_gap_within_seed_noise_a_tie(tmp_path):
    ledger = Ledger(tmp_path / "ledger.jsonl")
    ledger.append(record(1, "fpn", 0.301))
    ledger.append(record(2, None, 0.302, genotype=load_genotype("panet").replace(name="")))
    board = build_report(tmp_path).read_text()
    assert "(AP 0.301): +0.001 AP on one seed each, within what seeds alone move one neck" in board
    assert "a tie until confirmed over seeds" in board


def test_report_names_the_best_searched_cell_when_a_baseline_wins(tmp_path):
    ledger = Ledger(tmp_path / "ledger.jsonl")
    (tmp_path / "experiment.json").write_text(json.dumps({"channels": {"3": 8, "4": 16, "5": 32}, "width": 8}))
    ledger.append(record(1, "fpn", 0.3))
    ledger.append(record(2, None, 0.2, genotype=load_genotype("panet")))
    board = build_report(tmp_path).read_text()
    assert f"Best searched cell: `{load_genotype('panet').hash()[:12]}`" in board
    assert load_genotype(tmp_path / "best_searched.yaml").hash() == load_genotype("panet").hash()
    assert load_genotype(tmp_path / "best.yaml").hash() == load_genotype("fpn").hash()
    assert (tmp_path / "best_searched_neck.py").is_file() and (tmp_path / "drawings" / "best_searched.png").is_file()
    ledger.append(record(3, None, 0.4, genotype=load_genotype("bifpn")))
    board = build_report(tmp_path).read_text()  # a searched cell is now the best: no stale best_searched files
    assert "Best searched cell:" not in board and not list(tmp_path.glob("best_searched*"))
    assert not (tmp_path / "drawings" / "best_searched.png").exists()


def test_report_ranks_by_the_confirmation_and_gives_the_verdict_with_its_interval(tmp_path):
    """best.yaml is the confirmed winner even when the one-seed proxy ranked another neck first."""
    recipe = "confirm(steps=1200)"
    (tmp_path / "experiment.json").write_text(json.dumps({
        "channels": {"3": 8, "4": 16, "5": 32}, "width": 8, "concurrent": 2, "wall_seconds": 100.0,
        "confirm": {"recipe": recipe, "text": "1200 steps"}, "val_images": 73}))
    cell = load_genotype("bifpn").replace(name="")
    ledger = Ledger(tmp_path / "ledger.jsonl")
    ledger.append(record(1, "fpn", 0.30))
    ledger.append(record(2, "panet", 0.36))                               # the proxy's favourite ...
    ledger.append(record(3, None, 0.35, genotype=cell, stage="search"))
    confirmed = {"fpn": [0.40, 0.42, 0.41], "panet": [0.38, 0.40, 0.39], None: [0.43, 0.46, 0.445]}
    for name, aps in confirmed.items():
        for seed, ap in enumerate(aps):
            ledger.append(record(len(ledger) + 1, name, ap, genotype=cell if name is None else None, seed=seed,
                                 recipe=recipe, stage="confirm"))
    board = build_report(tmp_path).read_text()
    verdict = board.split("## Verdict")[1].split("##")[0]
    assert "beats `fpn`: +0.035 AP (95% interval" in verdict and "3 paired seeds" in verdict
    assert "0.445 ± 0.015" in verdict and "`fpn` 0.410 ± 0.010" in verdict
    assert "Kendall's tau -0.33 (3 necks" in verdict                       # ... is last when confirmed
    assert "The validation split has only 73 images: too few to rank necks." in verdict  # below 100
    table = board.split("## Confirmed ranking")[1].split("##")[0]
    assert table.index("cell-") < table.index("**fpn**") < table.index("**panet**")
    assert "0.430, 0.460, 0.445" in table
    assert load_genotype(tmp_path / "best.yaml").hash() == cell.hash()
    assert "## Cost" in board and "12 trials" in board


def test_a_new_search_writes_down_the_split_it_resolved(tmp_path, caplog):
    """The ledger does not key trials by the split: a resume must not work it out again (with
    another version's default), so config.yaml holds the share the search started with."""
    from nasfpn.search.driver import _resolved

    assert _resolved(search_config({})).data.val_fraction == 0.2  # the built-in 800 images
    with caplog.at_level("WARNING"):
        assert _resolved(search_config({"data": {"synthetic_images": 24}})).data.val_fraction == 0.4
    assert caplog.text.count("validation split: 0.40 of the 24 images") == 1
    annotations = tmp_path / "a.json"
    annotations.write_text(json.dumps({"images": [{"id": i} for i in range(500)], "annotations": []}))
    data = {"annotations": str(annotations), "images": str(tmp_path)}
    assert _resolved(search_config({"data": data})).data.val_fraction == 0.3
    assert _resolved(search_config({"data": {**data, "val_fraction": 0.25}})).data.val_fraction == 0.25
    assert _resolved(search_config({"data": {**data, "val_annotations": str(annotations)}})).data.val_fraction is None


def test_cost_aware_reward():
    assert reward_of(0.3, 2e9, None, -0.07) == 0.3
    assert reward_of(0.3, 2e9, 1e9, -0.07) == pytest.approx(0.3 * 2 ** -0.07)
    assert reward_of(0.3, 5e8, 1e9, -0.07) > 0.3


def test_a_search_that_cannot_start_fails_at_once_and_writes_nothing(tmp_path, capsys):
    """A wrong cluster address, space or controller: exit 2 within seconds, one line, no folder."""
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.time()
    for flags, message in ((["--address", f"127.0.0.1:{port}"], f"ray.address '127.0.0.1:{port}': no Ray cluster"),
                           (["--space", "nowhere"], "nowhere"), (["--controller", "magic"], "magic")):
        out = tmp_path / "never"
        assert main(["search", "--out", str(out), *flags]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
        assert not out.exists()
    assert time.time() - started < 20


def test_confirm_refuses_a_folder_without_a_search_or_held_by_another_driver(tmp_path, capsys):
    from nasfpn.search.lock import FolderLock

    assert main(["confirm", str(tmp_path)]) == 2
    assert "not an experiment folder" in capsys.readouterr().err
    ledger = Ledger(tmp_path / "ledger.jsonl")
    ledger.append(record(1, "fpn", 0.3))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(search_config({"search": {"trials": 2}}).to_dict()))
    assert main(["confirm", str(tmp_path)]) == 2
    assert "the search has 1 of its 2 trials; finish it first" in capsys.readouterr().err
    ledger.append(record(2, "panet", 0.3))
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from nasfpn.search.lock import FolderLock; "
                               "lock = FolderLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(60)",
                               str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["confirm", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert f"pid {holder.pid}" in err and "in use by another nasfpn driver" in err
        assert main(["search", "--resume", str(tmp_path)]) == 2
        assert f"pid {holder.pid}" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()
    with FolderLock(tmp_path):  # the killed holder's lock is stale: taken over
        pass


def test_resume_with_failure_reward_asks_lost_trials_again_and_records_nothing_for_them(tmp_path):
    """In flight when the driver died is not a failure, whatever ``failure_reward`` says."""
    import torch

    from nasfpn.controllers import make_controller
    from nasfpn.search.driver import _restore_controller
    from nasfpn.space import load_space

    spec = {"controller": "random", "failure_reward": 0.0}
    space = load_space("wide")
    controller = make_controller(space, spec, seed=0)
    (_, done), (_, lost) = controller.ask(), controller.ask()
    torch.save(controller.state_dict(), tmp_path / "controller.pt")  # the driver's last save: both in flight
    ledger = Ledger(tmp_path / "ledger.jsonl")  # one finished after that save, then the kill
    ledger.append(record(1, None, 0.25, genotype=done, stage="search"))
    resumed = make_controller(space, spec, seed=0)
    _restore_controller(resumed, tmp_path / "controller.pt", ledger)
    assert resumed.known_reward(done.hash()) == 0.25        # what finished is learnt
    assert resumed.known_reward(lost.hash()) is None        # nothing recorded for the lost one ...
    assert resumed.num_pending == 0 and resumed.stats["failures"] == 0
    _, again = resumed.ask()
    assert again.hash() == lost.hash()                      # ... and it comes back first
    _, new = resumed.ask()
    assert new.hash() not in (done.hash(), lost.hash())     # the finished one is not asked again


@pytest.mark.ray
def test_a_resume_that_finds_the_search_finished_without_its_report_writes_it_first(tmp_path, cache):
    # As if killed between the search's last trial and its report: the ledger is complete, no leaderboard.
    config = {**TINY, "search": {"trials": 2, "concurrent": 2, "baselines": ["fpn"]}, "scheduler": {"name": "none"},
              "confirm": {"seeds": 0}}
    out = tmp_path / "exp"
    finish(start_search(config, out, cache))
    (out / "leaderboard.md").unlink()
    saved = yaml.safe_load((out / "config.yaml").read_text())
    # Its confirmation under the search's recipe: seed 1 of the baseline and of the top cell.
    saved["confirm"].update(seeds=2, top_k=1, steps=TINY["proxy"]["steps"])
    (out / "config.yaml").write_text(yaml.safe_dump(saved))
    done = subprocess.run([sys.executable, "-m", "nasfpn.cli", "search", "--resume", str(out)], capture_output=True,
                          text=True, env={**os.environ, "NASFPN_CACHE": str(cache)}, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    said = "(the search's); the confirmation follows: 2 trials (2 of its 4 are in the ledger already)"
    assert said in done.stdout and done.stdout.index(said) < done.stdout.index("[confirm ")
    assert [e["seed"] for e in entries(out) if e["stage"] == "confirm"] == [1, 1]


@pytest.mark.ray
def test_confirm_extends_a_finished_search_and_resumes_after_sigkill_without_paying_twice(tmp_path, cache):
    config = {**TINY, "search": {"trials": 5, "concurrent": 2}, "scheduler": {"name": "none"},
              "confirm": {"seeds": 0}}
    out = tmp_path / "exp"
    finish(start_search(config, out, cache))
    assert [e["stage"] for e in entries(out)].count("confirm") == 0
    env = {**os.environ, "NASFPN_CACHE": str(cache)}
    command = [sys.executable, "-m", "nasfpn.cli", "confirm", str(out), "--top", "1", "--seeds", "2"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    assert wait_for(lambda: [e["stage"] for e in entries(out)].count("confirm") >= 2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    before = (out / "ledger.jsonl").read_text().splitlines()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    after = (out / "ledger.jsonl").read_text().splitlines()
    assert after[:len(before)] == before
    confirm = [e for e in entries(out) if e["stage"] == "confirm"]
    keys = [(e["trained_hash"], e["seed"], e["recipe"]) for e in confirm]
    assert len(keys) == len(set(keys)) == (4 + 1) * 2      # 4 baselines + the top cell, 2 seeds, each once
    assert all(e["recipe"] == "confirm(steps=60)" and e["status"] == "ok" for e in confirm)
    board = (out / "leaderboard.md").read_text()
    assert "## Confirmed ranking" in board and "paired seeds" in board
    assert yaml.safe_load((out / "config.yaml").read_text())["confirm"]["seeds"] == 2


def test_a_damaged_folder_file_is_named_on_resume(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text("search: {trials: 3\n")  # torn by hand: the driver writes it atomically
    assert main(["search", "--resume", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "config.yaml" in err and "damaged" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(search_config({"search": {"trials": 2}}).to_dict()))
    Ledger(tmp_path / "ledger.jsonl").append(record(1, "fpn", 0.3))
    (tmp_path / "controller.pt").write_bytes(b"not a torch file")
    from nasfpn.search.driver import _restore_controller
    from nasfpn.controllers import make_controller
    from nasfpn.space import load_space
    with pytest.raises(ValueError, match="controller.pt: damaged controller state"):
        _restore_controller(make_controller(load_space("wide"), "random"), tmp_path / "controller.pt",
                            Ledger(tmp_path / "ledger.jsonl"))
