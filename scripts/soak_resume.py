"""Soak test of ``nasfpn search --resume``: a tiny real search SIGKILLed again and again.

    .venv/bin/python scripts/soak_resume.py [--kills 20] [--seed 0] [--trials 64] [--baselines fpn,panet,...]
        [--out runs/soak-<time>] [--cache DIR] [--json soak_resume.json]

A tiny search (the built-in data as TINY in tests/test_search.py; confirmation: top_k 1, 2
seeds) runs in its own session; ``--kills`` times the whole session is SIGKILLed (the driver's
group, then Ray workers, which make groups of their own) and restarted with ``nasfpn search
--resume DIR`` (afresh if the kill came before the driver wrote config.yaml: ``--resume``
refuses a folder without it), until a run exits by itself after the last kill. The moments are drawn from
``--seed``, so a failure replays; each block of three kills has each kind once, in random order:
``launch`` (0.5-20 s after the launch: imports, task preparation, Ray start-up, maybe a trial),
``in-trial`` (0-4 s after a Ray trial process appears: training, search or confirmation),
``after-line`` (0-0.5 s after the next new ledger line: the driver saving the controller and
asking for the next trial). A private feature cache (``<out>/cache``): one backbone warm-up.

Checked (exit 1 if any fails): no ledger line seen after a kill is later missing or changed;
no trial key (trained_hash, seed, recipe) trained twice; search-stage lines == the budget; the
planned confirmation ((baselines + top_k cells) x seeds, distinct) all in the ledger; the last
run exits 0; the lock released (empty, lockable); no process of the started sessions left.
Measured: seconds from each restart to its first new ledger line (polled every 0.1 s).
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import yaml

MODES = {"launch": (0.5, 20.0), "in-trial": (0.0, 4.0), "after-line": (0.0, 0.5)}


def tiny_config(trials: int, baselines: list[str] | None) -> dict:
    search = {"trials": trials, "concurrent": 2, **({"baselines": baselines} if baselines is not None else {})}
    return {"data": {"synthetic_images": 24}, "backbone": {"name": "resnet18", "warmup_steps": 2},
            "proxy": {"image_size": 128, "width": 8, "head_depth": 1, "steps": 40, "batch_size": 4,
                      "eval_every": 20, "warmup_steps": 2},
            "space": "wide", "controller": "evolution", "search": search,
            "confirm": {"top_k": 1, "seeds": 2, "steps": 60}}  # steps given: a default may change meanwhile


def read_ledger(exp: Path) -> tuple[list[str], bool]:
    """The complete lines of the ledger, and whether a torn last line follows them."""
    path = exp / "ledger.jsonl"
    data = path.read_bytes() if path.is_file() else b""
    complete = data[:data.rfind(b"\n") + 1]
    return complete.decode().splitlines(), len(complete) < len(data)


def session_pids(sids: set[int], command: str = "") -> list[int]:
    """Live (not zombie) processes whose session is one of ``sids`` (and command line has ``command``)."""
    found = []
    for pid in (int(name) for name in os.listdir("/proc") if name.isdigit()):
        try:  # fields after the command: state, ppid, pgrp, session
            state, _, _, sid = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[:4]
        except (OSError, ValueError):
            continue
        if state != "Z" and int(sid) in sids and command in cmdline(pid):
            found.append(pid)
    return found


def cmdline(pid: int) -> str:  # "" for a process gone meanwhile
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def kill_session(proc: subprocess.Popen) -> int:
    """SIGKILL the driver's group, then the rest of its session; return how many were outside the group."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    others, deadline = session_pids({proc.pid}), time.time() + 10
    for pid in others:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    while session_pids({proc.pid}) and time.time() < deadline:
        time.sleep(0.1)
    return len(others)


def lock_released(path: Path) -> bool:
    """The driver's lock file is empty (a clean release) and nobody holds its flock."""
    if not path.is_file() or path.read_text():
        return False
    with open(path) as f, contextlib.suppress(BlockingIOError):
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    return False


def confirmation(exp: Path, rows: list[dict]) -> dict:
    """The planned confirmation keys (as the driver plans them) against the ledger's."""
    from nasfpn import load_genotype
    from nasfpn.search.config import search_config
    from nasfpn.search.confirm import confirm_proxy, plan, recipe_name
    from nasfpn.search.ledger import Ledger
    from nasfpn.search.records import Candidate

    config = search_config(yaml.safe_load((exp / "config.yaml").read_text()))
    proxy = confirm_proxy(config.proxy, config.confirm)
    recipe = recipe_name(proxy, config.proxy)
    bases = [Candidate.of(load_genotype(name), proxy, seed=0, recipe=recipe, baseline=name, stage="confirm")
             for name in config.search.baselines]
    planned = [c.key for c in plan(Ledger(exp / "ledger.jsonl", default_seed=config.proxy.seed), bases,
                                   config.confirm, proxy, recipe)]
    cells = {r["trained_hash"] for r in rows if r["recipe"] == "search" and not r["baseline"]
             and r["status"] != "failed"}
    expected = (len(bases) + min(config.confirm.top_k, len(cells))) * config.confirm.seeds
    keys = [(r["trained_hash"], r["seed"], r["recipe"]) for r in rows
            if r["stage"] == "confirm" and r["status"] == "ok"]
    return {"planned": len(planned), "expected": expected, "done": len(set(planned) & set(keys)),
            "extra": sum(k not in set(planned) for k in keys),
            "complete": len(set(planned)) == len(planned) == expected and set(planned) <= set(keys)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0, help="draws the kill moments (replay a failure with it)")
    parser.add_argument("--trials", type=int, default=64, help="the search budget, baselines included")
    parser.add_argument("--baselines", help="comma-separated baselines (default: the search's four)")
    parser.add_argument("--out", type=Path, default=Path("runs") / f"soak-{time.strftime('%Y%m%d-%H%M%S')}")
    parser.add_argument("--cache", type=Path, help="feature cache (default <out>/cache)")
    parser.add_argument("--json", type=Path, default=Path("soak_resume.json"))
    parser.add_argument("--run-timeout", type=float, default=900, help="seconds one driver run may take")
    args = parser.parse_args(argv)
    root = args.out.resolve()
    exp, logs = root / "exp", root / "logs"
    if exp.exists():
        parser.error(f"{exp} exists: pick another --out")
    logs.mkdir(parents=True, exist_ok=True)
    baselines = args.baselines.split(",") if args.baselines is not None else None
    (root / "soak.yaml").write_text(yaml.safe_dump(tiny_config(args.trials, baselines)))
    env = {**os.environ, "NASFPN_CACHE": str((args.cache or root / "cache").resolve())}
    base = [sys.executable, "-m", "nasfpn.cli", "search"]
    rng = random.Random(args.seed)
    started = time.time()
    committed, modes, events, lost, sids = [], [], [], [], set()
    kills = fresh_restarts = torn = 0
    final_rc: int | None = None
    for run in range(1, args.kills + 2):
        fresh = not (exp / "config.yaml").is_file()
        fresh_restarts += fresh and run > 1
        cmd = base + (["--config", str(root / "soak.yaml"), "--out", str(exp)] if fresh else ["--resume", str(exp)])
        if kills < args.kills and not modes:
            modes = rng.sample(sorted(MODES), len(MODES))
        mode = modes.pop(0) if kills < args.kills else None
        delay = rng.uniform(*MODES[mode]) if mode else None
        kill_at = delay if mode == "launch" else None
        with open(logs / f"run-{run:02d}.log", "w") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        sids.add(proc.pid)
        launch, before, first_new, killed, outside = time.time(), len(committed), None, False, 0
        while True:
            rc, now = proc.poll(), time.time() - launch
            if first_new is None and len(read_ledger(exp)[0]) > before:
                first_new = round(now, 2)
                if mode == "after-line":
                    kill_at = now + delay
            if mode == "in-trial" and kill_at is None and session_pids({proc.pid}, "ImplicitFunc"):
                kill_at = now + delay
            if rc is not None:
                break
            if (kill_at is not None and now >= kill_at) or now > args.run_timeout:
                outside, killed = kill_session(proc), True
                break
            time.sleep(0.1)
        lines, was_torn = read_ledger(exp)
        torn += was_torn
        gone = [i + 1 for i, line in enumerate(committed) if i >= len(lines) or lines[i] != line]
        lost += [{"line": i, "run": run, "before": committed[i - 1], "after": (lines[i - 1:i] or [None])[0]}
                 for i in gone]
        committed = lines
        event = {"run": run, "command": "fresh" if fresh else "resume", "mode": mode,
                 "delay": delay and round(delay, 2), "killed": killed, "seconds": round(time.time() - launch, 1),
                 "lines_before": before, "lines_after": len(lines), "first_new_line": first_new,
                 "torn": was_torn, "outside_group": outside, "rc": None if killed else proc.returncode}
        events.append(event)
        what = f"killed [{mode} {event['delay']}s]" if killed else f"exit {proc.returncode}"
        print(f"run {run:2d} {event['command']:6s} {what:25s} after {event['seconds']:6.1f} s | ledger {before:2d} -> "
              f"{len(lines):2d}{' +torn' if was_torn else ''} | first new line after {first_new} s"
              f"{' | LOST ' + str(gone) if gone else ''}", flush=True)
        if killed and now <= args.run_timeout:
            kills += 1
            continue
        final_rc = -1 if killed else proc.returncode  # -1: no end within --run-timeout
        break
    total = time.time() - started
    rows = [json.loads(line) for line in committed]
    trained = Counter((r["trained_hash"], r["seed"], r["recipe"]) for r in rows
                      if r["status"] != "failed" and not r["answered_from_ledger"])
    twice = {" ".join(map(str, k)): n for k, n in trained.items() if n > 1}
    search_lines = sum(r["stage"] != "confirm" for r in rows)
    confirm = confirmation(exp, rows) if final_rc == 0 else {"complete": False}
    lock_free = lock_released(exp / ".driver.lock")
    while session_pids(sids) and time.time() - started < total + 20:  # Ray's shutdown may take seconds
        time.sleep(0.5)
    leftovers = [{"pid": p, "cmd": cmdline(p)[:120]} for p in session_pids(sids)]
    for item in leftovers:  # ours: clean up after recording them
        with contextlib.suppress(ProcessLookupError):
            os.kill(item["pid"], signal.SIGKILL)
    latencies = [e["first_new_line"] for e in events if e["run"] > 1 and e["first_new_line"] is not None]
    checks = {"lost == 0": not lost, "trained_twice == 0": not twice,
              f"search lines == budget {args.trials}": search_lines == args.trials,
              "confirmation complete": confirm["complete"], "final exit 0": final_rc == 0,
              "lock released": lock_free, "no processes left": not leftovers}
    result = {"kills": kills, "kills_requested": args.kills, "seed": args.seed, "budget": args.trials,
              "trials_finished": len(rows), "search_lines": search_lines, "confirm_lines": len(rows) - search_lines,
              "answered_from_ledger": sum(r["answered_from_ledger"] for r in rows), "lost": len(lost),
              "lost_lines": lost, "trained_twice": sum(n - 1 for n in twice.values()), "trained_twice_keys": twice,
              "confirmation": confirm, "confirm_done_of_planned": f"{confirm.get('done')} / {confirm.get('expected')}",
              "torn_lines_left_by_kills": torn, "fresh_restarts": fresh_restarts,
              "restart_to_first_new_line": latencies,
              "restart_to_first_new_line_median": statistics.median(latencies) if latencies else None,
              "restart_to_first_new_line_max": max(latencies) if latencies else None,
              "restarts_killed_before_a_new_line": sum(e["killed"] and e["first_new_line"] is None for e in events),
              "total_seconds": round(total, 1), "final_rc": final_rc, "lock_released": lock_free,
              "processes_left": len(leftovers), "leftover_processes": leftovers, "checks": checks,
              "ok": all(checks.values()),
              "folder": str(root), "events": events}
    args.json.write_text(json.dumps(result, indent=1))
    print()
    for key in ("kills", "trials_finished", "search_lines", "budget", "confirm_lines", "confirm_done_of_planned",
                "lost", "trained_twice", "answered_from_ledger", "torn_lines_left_by_kills", "fresh_restarts",
                "restart_to_first_new_line", "restart_to_first_new_line_median", "restart_to_first_new_line_max",
                "restarts_killed_before_a_new_line", "total_seconds", "final_rc", "lock_released", "processes_left"):
        print(f"{key:36s} {result[key]}")
    for name, good in checks.items():
        print(f"{'ok  ' if good else 'FAIL'} {name}")
    print(f"wrote {args.json} (folder {root})")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
