import os

for _key, _value in {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AIR_NEW_OUTPUT": "0"}.items():
    os.environ.setdefault(_key, _value)  # before Ray is imported

import pytest  # noqa: E402
import torch  # noqa: E402

from nasfpn import Genotype  # noqa: E402
from nasfpn.controllers import PPO, Evolution, ToyReward  # noqa: E402
from nasfpn.controllers.tune import NASSearcher, toy_trainable  # noqa: E402
from nasfpn.space import load_space  # noqa: E402

ray = pytest.importorskip("ray")
from ray import tune  # noqa: E402
from ray.tune.search import ConcurrencyLimiter, Searcher  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def paper():
    return load_space("nasfpn")


def searcher(space, **kwargs):
    return NASSearcher(PPO(space, seed=0, batch_size=4, hidden=16, embed=8), metric="reward", **kwargs)


def test_suggest_complete_and_budget(paper):
    s = searcher(paper, max_trials=3)
    configs = [s.suggest(f"t{i}") for i in range(3)]
    assert s.suggest("t3") == Searcher.FINISHED
    for config in configs:
        genotype = Genotype.from_dict(config["genotype"])
        assert paper.contains(genotype) and genotype.hash() == config["hash"]
    s.on_trial_complete("t0", {"reward": 0.5})
    s.on_trial_complete("t1", None, error=True)
    s.on_trial_complete("t2", {"other": 1.0})  # metric missing: a failure
    s.on_trial_complete("t9", {"reward": 1.0})  # unknown trial: ignored
    stats = s.controller.stats
    assert (stats["told"], stats["failures"], s.completed) == (3, 2, 3)
    assert s.controller.known_reward(configs[0]["hash"]) == 0.5


def test_mode_min_is_negated(paper):
    s = NASSearcher(Evolution(paper, seed=0), metric="loss", mode="min")
    config = s.suggest("a")
    s.on_trial_complete("a", {"loss": 0.25})
    assert s.controller.known_reward(config["hash"]) == -0.25
    with pytest.raises(ValueError, match="mode must be 'max' or 'min', got 'up'"):
        NASSearcher(Evolution(paper), metric="loss", mode="up")


def drive(s, configs, reward, start, stop):
    """Suggest trials ``start..stop``, completing each two suggestions later (two stay pending)."""
    hashes = []
    for i in range(start, stop):
        configs[f"t{i}"] = s.suggest(f"t{i}")
        hashes.append(configs[f"t{i}"]["hash"])
        if i >= 2:
            genotype = Genotype.from_dict(configs[f"t{i - 2}"]["genotype"])
            s.on_trial_complete(f"t{i - 2}", {"reward": reward(genotype)})
    return hashes


def test_save_restore_continues_exactly(paper, tmp_path):
    reward = ToyReward(paper, seed=1)
    original, configs = searcher(paper, max_trials=40), {}
    drive(original, configs, reward, 0, 9)
    path = tmp_path / "searcher-state.pkl"
    original.save(str(path))
    assert os.listdir(tmp_path) == ["searcher-state.pkl"]  # no temporary file left
    assert torch.load(path, weights_only=True)["format"] == "nasfpn.tune_searcher"  # no pickled classes
    restored = searcher(paper, max_trials=40)
    restored.restore(str(path))
    assert restored.suggested == 9 and restored.controller.num_pending == 2
    assert drive(restored, dict(configs), reward, 9, 25) == drive(original, configs, reward, 9, 25)
    with pytest.raises(ValueError, match="state is for controller 'ppo', not 'evolution'"):
        NASSearcher(Evolution(paper), metric="reward").restore(str(path))


@pytest.mark.ray
def test_tuner_run_with_real_ray(paper, tmp_path):
    """One small Tune run: 8 trials, 2 at a time, PPO updating every 4 results."""
    s = searcher(paper, max_trials=8)
    before = {k: v.clone() for k, v in s.controller.policy.state_dict().items()}
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    try:
        tuner = tune.Tuner(
            tune.with_parameters(toy_trainable, space="nasfpn", target_seed=3),
            tune_config=tune.TuneConfig(search_alg=ConcurrencyLimiter(s, max_concurrent=2), num_samples=-1,
                                        reuse_actors=True),
            run_config=tune.RunConfig(name="toy", storage_path=str(tmp_path), verbose=0))
        results = tuner.fit()
    finally:
        ray.shutdown()
    assert len(results) == 8 and not results.errors
    rewards = [r.metrics["reward"] for r in results]
    assert all(0.0 <= r <= 1.0 for r in rewards)
    assert s.completed == 8 and s.controller.stats["told"] == 8 and s.controller.stats["updates"] == 2
    after = s.controller.policy.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    reward = ToyReward(paper, seed=3)
    assert sorted(rewards) == sorted(reward(Genotype.from_dict(r.config["genotype"])) for r in results)
    # Tune saved the searcher with our save(): a fresh one restores from the experiment folder.
    again = searcher(paper, max_trials=8)
    again.restore_from_dir(str(tmp_path / "toy"))
    assert again.completed == 8 and again.suggest("next") == Searcher.FINISHED
