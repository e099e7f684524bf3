"""The search's stages without Ray: baselines first, ledger answers, the budget, seeds,
confirmation planned from the ledger, and what a resumed controller learns of lost trials."""
import dataclasses
import json
import math

import pytest

from nasfpn import load_genotype
from nasfpn.controllers import make_controller
from nasfpn.search.confirm import ConfirmConfig, confirm_proxy, confirmed_table, finalists, plan, recipe_name
from nasfpn.search.ledger import Ledger
from nasfpn.search.records import SEARCH, Candidate, TrialRecord
from nasfpn.search.stages import Baselines, Confirmation, ControllerStage, Pipeline, Seeds, Stage
from nasfpn.space import load_space
from nasfpn.train import ProxyConfig

PROXY = ProxyConfig(eval_every=200)


def fake_ap(candidate: Candidate) -> float:
    """A deterministic stand-in for training (these tests are about bookkeeping): a value from
    the trained neck and the seed."""
    return (int(candidate.trained_hash[:6], 16) % 1000) / 4000 + candidate.seed * 0.001


def run(pipeline: Pipeline, status=lambda c: "ok", concurrent: int = 2) -> list:
    """Drive a pipeline as Tune would: up to ``concurrent`` in flight, finishing the oldest."""
    flight, trained = [], []
    while True:
        while len(flight) < concurrent:
            candidate = pipeline.ask()
            if candidate is None:
                break
            flight.append(candidate)
        if not flight:
            assert pipeline.finished
            return trained
        candidate = flight.pop(0)
        trained.append(candidate)
        ap = fake_ap(candidate)
        pipeline.finish(candidate, TrialRecord.finished(pipeline.ledger.next_trial(), candidate, status(candidate),
                                                        {"ap": ap, "reward": ap, "seconds": 1.0}))


def baseline_candidates(names=("fpn", "panet")):
    return [Candidate.of(load_genotype(n), PROXY, seed=0, baseline=n, stage="baseline") for n in names]


def search_pipeline(ledger, controller, budget, names=("fpn", "panet")):
    baselines = baseline_candidates(names)
    return Pipeline([Baselines(baselines, ledger, controller),
                     ControllerStage(controller, PROXY, {c.hash: c.baseline for c in baselines})], ledger, budget=budget)


def test_baselines_first_then_the_controller_up_to_exactly_the_budget(tmp_path):
    ledger = Ledger(tmp_path / "ledger.jsonl")
    controller = make_controller(load_space("wide"), "random", seed=0)
    trained = run(search_pipeline(ledger, controller, budget=6))
    assert [c.baseline for c in trained[:2]] == ["fpn", "panet"]
    again = Ledger(tmp_path / "ledger.jsonl")  # the ledger line round-trips
    assert len(ledger) == 6 and [r.to_json() for r in again] == [r.to_json() for r in ledger]
    # the controller learnt the baselines' rewards by record and its own by tell
    assert controller.known_reward(trained[0].hash) == pytest.approx(fake_ap(trained[0]))
    assert controller.num_pending == 0


def test_a_known_key_is_answered_from_the_ledger_without_training(tmp_path):
    """The wide space's FPN cell (2 repeats) is the FPN baseline once the proxy caps repeats at 1."""
    ledger = Ledger(tmp_path / "ledger.jsonl")
    wide = load_space("wide")
    fpn = baseline_candidates(["fpn"])[0]
    cell = wide.decode(wide.encode(fpn.genotype.replace(width=PROXY.width)))
    assert cell.hash() != fpn.hash

    class Fixed(Stage):
        finished = False

        def ask(self):
            return Candidate.of(cell, PROXY, seed=0)

    pipeline = Pipeline([Baselines([fpn], ledger), Fixed()], ledger, budget=3)
    trained = run(pipeline, concurrent=1)
    assert len(trained) == 1 and len(ledger) == 3  # one training, the budget filled by answers
    answers = ledger.records[1:]
    assert all(r.answered_from_ledger and r.seconds == 0 and r.ap == ledger.records[0].ap for r in answers)


def test_seeds_trains_each_candidate_under_every_seed_and_tells_the_mean(tmp_path):
    ledger = Ledger(tmp_path / "ledger.jsonl")
    controller = make_controller(load_space("wide"), "random", seed=1)
    pipeline = Pipeline([Seeds(ControllerStage(controller, PROXY, {}), [0, 1, 2])], ledger, budget=6)
    trained = run(pipeline)
    assert [c.seed for c in trained] == [0, 1, 2, 0, 1, 2]
    first = trained[0]
    mean = sum(fake_ap(c) for c in trained[:3]) / 3
    assert controller.known_reward(first.hash) == pytest.approx(mean)


def test_confirmation_plans_the_finalists_and_baselines_and_never_pays_twice(tmp_path):
    ledger = Ledger(tmp_path / "ledger.jsonl")
    controller = make_controller(load_space("wide"), "random", seed=2)
    run(search_pipeline(ledger, controller, budget=6))
    confirm = ConfirmConfig(top_k=2, seeds=3)
    proxy = confirm_proxy(PROXY, confirm)
    recipe = recipe_name(proxy, PROXY)
    assert recipe == "confirm(steps=900)" and proxy.eval_every == 0
    assert recipe_name(confirm_proxy(PROXY, ConfirmConfig(steps=PROXY.steps)), PROXY) == SEARCH
    top = finalists(ledger, 2)
    searched = sorted((r for r in ledger if not r.candidate.baseline), key=lambda r: -r.reward)
    assert [r.candidate.trained_hash for r in top] == [r.candidate.trained_hash for r in searched[:2]]
    baselines = [dataclasses.replace(c, recipe=recipe, stage="confirm") for c in baseline_candidates()]

    def planned(led):
        return plan(led, baselines, confirm, proxy, recipe)

    assert len(planned(ledger)) == 4 * 3
    killed = Pipeline([Confirmation(planned, ledger)], ledger)
    first = [killed.ask() for _ in range(5)]  # five in flight ...
    for c in first[:3]:                       # ... three finish, then the driver dies
        killed.finish(c, TrialRecord.finished(ledger.next_trial(), c, "ok", {"ap": fake_ap(c), "reward": fake_ap(c)}))
    resumed = Ledger(tmp_path / "ledger.jsonl")
    trained = run(Pipeline([Confirmation(planned, resumed)], resumed))
    assert len(trained) == 12 - 3             # the three that finished are not paid again
    keys = [r.key for r in resumed if r.candidate.stage == "confirm"]
    assert len(keys) == len(set(keys)) == 12
    table, figures = confirmed_table(resumed, recipe)
    assert len(table) == 4 and all(len(n.records) == 3 for n in table)
    assert [n.summary["mean"] for n in table] == sorted((n.summary["mean"] for n in table), reverse=True)
    assert figures["best_baseline"].baseline in ("fpn", "panet")
    assert figures["seeds"] == 3 and not math.isnan(figures["resolvable"])


def test_confirmation_under_the_search_recipe_reuses_seed_0(tmp_path):
    ledger = Ledger(tmp_path / "ledger.jsonl")
    controller = make_controller(load_space("wide"), "random", seed=3)
    run(search_pipeline(ledger, controller, budget=4))
    confirm = ConfirmConfig(top_k=1, seeds=2, steps=PROXY.steps)
    proxy = confirm_proxy(PROXY, confirm)
    baselines = [dataclasses.replace(c, stage="confirm") for c in baseline_candidates()]
    trained = run(Pipeline([Confirmation(lambda led: plan(led, baselines, confirm, proxy, SEARCH), ledger)],
                           ledger))
    assert sorted(c.seed for c in trained) == [1, 1, 1]  # seed 0 of each neck is the search's own trial
    table, _ = confirmed_table(ledger, SEARCH)
    assert len(table) == 3 and all(sorted(n.by_seed) == [0, 1] for n in table)


def test_stopped_results_answer_the_search_but_not_the_confirmation(tmp_path):
    ledger = Ledger(tmp_path / "ledger.jsonl")
    fpn = baseline_candidates(["fpn"])[0]
    ledger.append(TrialRecord.finished(1, fpn, "stopped", {"ap": 0.1, "reward": 0.1}))
    assert ledger.find(fpn.key) is not None and ledger.find(fpn.key, full=True) is None


def test_a_resumed_controller_forgets_lost_trials_and_asks_them_again():
    """In flight when the driver died is not a failure: with ``failure_reward`` set, nothing is
    recorded for the lost trial and its genotype is proposed again first."""
    space = load_space("wide")
    controller = make_controller(space, {"controller": "random", "failure_reward": 0.0}, seed=0)
    trial_id, genotype = controller.ask()
    state = controller.state_dict()
    restored = make_controller(space, {"controller": "random", "failure_reward": 0.0}, seed=0)
    restored.load_state_dict(state)
    restored.forget(trial_id)
    assert restored.known_reward(genotype.hash()) is None and restored.num_pending == 0
    again_id, again = restored.ask()
    assert again.hash() == genotype.hash()
    restored.tell(again_id, None)  # a real failure still counts as failure_reward
    assert restored.known_reward(genotype.hash()) == 0.0


def test_the_torn_tail_repro_resumes_with_every_trial_kept(tmp_path):
    """Append two, tear a third mid-line, reopen, append two, reopen: all four are there."""
    path = tmp_path / "ledger.jsonl"
    fpn, panet, bifpn, nasfpn, extra = baseline_candidates(["fpn", "panet", "bifpn", "nasfpn", "fpn"])
    extra = dataclasses.replace(extra, seed=1)
    ledger = Ledger(path)
    for c in (fpn, panet):
        ledger.append(TrialRecord.finished(ledger.next_trial(), c, "ok", {"ap": 0.2, "reward": 0.2}))
    with open(path, "a") as f:
        f.write('{"trial": 3, "ha')
    again = Ledger(path)
    assert len(again) == 2
    for c in (bifpn, nasfpn):
        again.append(TrialRecord.finished(again.next_trial(), c, "ok", {"ap": 0.3, "reward": 0.3}))
    final = Ledger(path)
    assert [r.candidate.baseline for r in final] == ["fpn", "panet", "bifpn", "nasfpn"]
    assert [r.trial for r in final] == [1, 2, 3, 4]
    lines = path.read_text().splitlines()
    assert len(lines) == 4 and all(json.loads(line)["genotype"] for line in lines)  # the fragment is gone
    final.append(TrialRecord.finished(5, extra, "ok", {"ap": 0.1, "reward": 0.1}))
    assert len(Ledger(path)) == 5


def test_a_damaged_middle_line_is_an_error_naming_it(tmp_path):
    path = tmp_path / "ledger.jsonl"
    ledger = Ledger(path)
    for c in baseline_candidates():
        ledger.append(TrialRecord.finished(ledger.next_trial(), c, "ok", {"ap": 0.2, "reward": 0.2}))
    lines = path.read_text().splitlines()
    path.write_text(lines[0][:20] + "\n" + lines[1] + "\n")
    with pytest.raises(ValueError, match="line 1 is not a trial record"):
        Ledger(path)


def test_ray_stays_in_its_files():
    """Ray only in connect (inside functions), tune_run and trainable (import circles:
    tests/test_package.py walks the whole package)."""
    import subprocess
    import sys

    ray_free = ["records", "ledger", "stages", "confirm", "stats", "config", "report", "leaderboard", "driver",
                "connect", "lock"]
    code = "import sys\n" + "".join(f"import nasfpn.search.{m}\n" for m in ray_free) + "print('ray' in sys.modules)"
    done_run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done_run.stdout.strip() == "False", done_run.stderr


def test_seeds_resume_mid_group_trains_only_the_missing_seeds(tmp_path):
    """A kill after 1 of 3 seeds: the resumed controller does not take that one seed for the
    neck's reward, asks the neck again, and only the two missing seeds are trained."""
    from nasfpn.search.driver import _restore_controller

    space = load_space("wide")
    ledger = Ledger(tmp_path / "ledger.jsonl")
    controller = make_controller(space, "random", seed=4)
    pipeline = Pipeline([Seeds(ControllerStage(controller, PROXY, {}), [0, 1, 2], ledger)], ledger, budget=6)
    first = pipeline.ask()
    pipeline.ask()                                       # seed 1 in flight too
    ap = fake_ap(first)
    pipeline.finish(first, TrialRecord.finished(1, first, "ok", {"ap": ap, "reward": ap}))
    state = controller.state_dict()                      # saved after that record; then the kill
    import torch
    torch.save(state, tmp_path / "controller.pt")
    resumed_ledger = Ledger(tmp_path / "ledger.jsonl")
    resumed = make_controller(space, "random", seed=4)
    _restore_controller(resumed, tmp_path / "controller.pt", resumed_ledger, seeds=3)
    assert resumed.known_reward(first.hash) is None      # one seed of three is not the neck's reward
    again = Pipeline([Seeds(ControllerStage(resumed, PROXY, {}), [0, 1, 2], resumed_ledger)], resumed_ledger,
                     budget=6)
    trained = run(again)
    assert [(c.hash == first.hash, c.seed) for c in trained[:2]] == [(True, 1), (True, 2)]
    assert len(resumed_ledger) == 6 and len({r.key for r in resumed_ledger}) == 6
    aps = [fake_ap(dataclasses.replace(first, seed=s)) for s in (0, 1, 2)]
    assert resumed.known_reward(first.hash) == pytest.approx(sum(aps) / 3)


def test_resume_without_controller_state_learns_the_ledger(tmp_path):
    """No controller.pt (removed, or a kill before the first save): the ledger still teaches the
    controller, so it does not spend the budget re-proposing what is done."""
    from nasfpn.search.driver import _restore_controller

    ledger = Ledger(tmp_path / "ledger.jsonl")
    controller = make_controller(load_space("wide"), "random", seed=5)
    run(search_pipeline(ledger, controller, budget=5))
    fresh = make_controller(load_space("wide"), "random", seed=5)
    _restore_controller(fresh, tmp_path / "controller.pt", ledger)
    assert all(fresh.known_reward(r.candidate.hash) == pytest.approx(r.reward) for r in ledger)
    trained = run(search_pipeline(ledger, fresh, budget=8))
    assert len(trained) == 3 and not any(r.answered_from_ledger for r in ledger)


def test_candidates_waiting_for_an_in_flight_neck_count_towards_the_budget(tmp_path):
    ledger = Ledger(tmp_path / "ledger.jsonl")
    fpn = baseline_candidates(["fpn"])[0]
    wide = load_space("wide")
    twin = Candidate.of(wide.decode(wide.encode(fpn.genotype.replace(width=PROXY.width))), PROXY, seed=0)
    assert twin.key == fpn.key and twin.hash != fpn.hash

    class Twins(Stage):
        finished = False

        def ask(self):
            return twin

    pipeline = Pipeline([Baselines([fpn], ledger), Twins()], ledger, budget=3)
    flight = [pipeline.ask()]
    assert pipeline.ask() is None                    # two twins wait for FPN: the budget of 3 is spoken for
    assert len(pipeline._waiting[fpn.key]) == 2
    pipeline.finish(flight[0], TrialRecord.finished(1, flight[0], "ok", {"ap": 0.3, "reward": 0.3}))
    assert len(ledger) == 3 and pipeline.finished
