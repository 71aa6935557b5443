"""The search space as Tune's searcher and scheduler (sweep/space.py, sweep/search.py), without Ray
running: Optuna distributions, the trial config of a Tune config, repeats averaged per objective, ASHA rungs."""
from __future__ import annotations


import optuna

from objmae_ray.sweep.search import build_sampler, build_search, build_trial_scheduler, optuna_space
from objmae_ray.sweep.space import TRIAL_INDEX, base_trial, trial_from_tune_config
from objmae_ray.sweep.spec import load_spec
from test_sweep_tuner import SMOKE, tiny_spec


def test_optuna_space_and_samplers(tmp_path):
    spec = load_spec(SMOKE)
    space = optuna_space(spec)
    assert space == {
        # alpha in [1/8, 1/2] on a 4 x 4 grid: only L = 2..8 patches per side exist, so only L / 16
        "masking.alpha": optuna.distributions.CategoricalDistribution([k / 16 for k in range(2, 9)]),
        "masking.padding": optuna.distributions.CategoricalDistribution(["zero", "replicate", "random"]),
        "masking.selection": optuna.distributions.CategoricalDistribution(["object", "inter", "mae"]),
    }
    grid = load_spec(tiny_spec(tmp_path, "g", "sampler: {kind: grid}\nsearch_space:\n  patch_size: {choices: [8, 16]}\n"
                                              "  model.norm_pix_loss: true\n  pretrain.epochs: {type: int, low: 1, high: 3}\n"))
    assert optuna_space(grid) == {
        "model.patch_size": optuna.distributions.CategoricalDistribution([8, 16]),
        "pretrain.epochs": optuna.distributions.CategoricalDistribution([1, 2, 3])}
    assert base_trial(grid).model.norm_pix_loss is True  # fixed values go into the base trial
    limiter = build_search(grid)
    assert limiter.max_concurrent == 1 and limiter.searcher.metric == "top1"


def test_trial_config_from_tune_config():
    spec = load_spec(SMOKE)
    config = {**base_trial(spec).model_dump(), "masking.alpha": 0.2, "masking.selection": "mae", TRIAL_INDEX: 2,
              "_storage_path": "/x"}
    cfg = trial_from_tune_config(config)
    assert cfg.masking.alpha == 0.2 and cfg.masking.selection == "mae" and cfg.seed == spec.base.seed + 2
    assert cfg.model.preset == "micro"


def test_multi_objective_repeats_and_asha(tmp_path):
    spec = load_spec(tiny_spec(tmp_path, "m", "sampler: {kind: nsga2}\nnum_samples: 6\nrepeats: 3\nconcurrency: 2\n"
                                              "search_space:\n  alpha: {type: float, low: 0.1, high: 0.5}\n"
                                              "  transfer.0.epochs: 3\n",
                               objectives="  - {metric: top1, mode: max}\n  - {metric: speedup_est, mode: max}\n"))
    storage = optuna.storages.InMemoryStorage()
    limiter = build_search(spec, storage=storage)
    repeater = limiter.searcher
    assert limiter.max_concurrent == 2 and repeater.repeat == 3
    assert repeater.searcher.metric == ["top1", "speedup_est"] and repeater.searcher.mode == ["max", "max"]
    assert isinstance(build_sampler(spec), optuna.samplers.NSGAIISampler)
    # the repeater tells Optuna the mean of the repeats, per objective
    configs = [repeater.suggest(f"t{i}") for i in range(3)]
    assert [c[TRIAL_INDEX] for c in configs] == [0, 1, 2]
    assert len({c["masking.alpha"] for c in configs}) == 1  # one configuration, three seeds
    for i, top1 in enumerate([10.0, 20.0, 60.0]):
        repeater.on_trial_complete(f"t{i}", {"top1": top1, "speedup_est": 2.0})
    study = optuna.load_study(study_name="m", storage=storage)
    [told] = study.get_trials()
    assert told.values == [30.0, 2.0] and told.params["masking.alpha"] == configs[0]["masking.alpha"]
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MAXIMIZE"]
    # ASHA prunes on one metric: on a single-objective study only (validate refuses it with two)
    spec = load_spec(tiny_spec(tmp_path, "a", "sampler: {kind: tpe}\nnum_samples: 6\n"
                                              "scheduler: {kind: asha, metric: top1}\n"
                                              "search_space:\n  alpha: {type: float, low: 0.1, high: 0.5}\n"
                                              "  transfer.0.epochs: 3\n"))
    asha = build_trial_scheduler(spec)
    # rungs count reports (one per epoch): first rung at the first fine-tune epoch, max_t = 1 + 3 epochs
    assert asha.metric == "top1"
    assert [line.strip() for line in asha.debug_string().splitlines()[1].removeprefix("Bracket:").split("|")] == \
        ["Iter 4.000: None", "Iter 2.000: None"]


def test_list_sampler_suggests_exactly_the_rows_in_order(tmp_path):
    spec = load_spec(tiny_spec(tmp_path, "l", "sampler: {kind: list}\nconfigurations:\n"
                                              "  - {alpha: 0.5, selection: mae}\n  - {alpha: 0.25}\n"
                                              "  - {selection: inter, padding: random}\n"))
    assert optuna_space(spec) == {  # each field the rows set, over the values they give it (base value if unset)
        "masking.alpha": optuna.distributions.CategoricalDistribution([0.5, 0.25, 0.34]),
        "masking.selection": optuna.distributions.CategoricalDistribution(["mae", "object", "inter"]),
        "masking.padding": optuna.distributions.CategoricalDistribution(["zero", "random"])}
    searcher = build_search(spec).searcher
    suggested = [searcher.suggest(f"t{i}") for i in range(3)]
    assert suggested == [{"masking.alpha": 0.5, "masking.selection": "mae", "masking.padding": "zero"},
                         {"masking.alpha": 0.25, "masking.selection": "object", "masking.padding": "zero"},
                         {"masking.alpha": 0.34, "masking.selection": "inter", "masking.padding": "random"}]


def test_searcher_never_hands_out_the_same_trial_twice(tmp_path):
    """Random sampling of alpha in [1/8, 1/2] x 2 paddings on a 4 x 4 grid: 7 x 2 = 14 distinct trials. Asking
    for all 14 gives 14 different (alpha, padding); a sampler proposing a trial again is told the earlier
    result; the 15th ask finds nothing new and the searcher says it is finished."""
    from ray.tune.search import Searcher

    spec = load_spec(tiny_spec(tmp_path, "d", "sampler: {kind: random, seed: 3}\nnum_samples: 14\nsearch_space:\n"
                                              "  alpha: {type: float, low: 0.125, high: 0.5, log: true}\n"
                                              "  padding: {choices: [zero, random]}\n"))
    storage = optuna.storages.InMemoryStorage()
    searcher = build_search(spec, storage=storage).searcher
    seen = set()
    for i in range(14):
        config = searcher.suggest(f"t{i}")
        key = (round(config["masking.alpha"] * 16), config["masking.padding"])
        assert key not in seen and config["masking.alpha"] * 16 == key[0]  # alpha is L / 16 exactly
        seen.add(key)
        searcher.on_trial_complete(f"t{i}", {"top1": float(i)})
    assert searcher.suggest("t14") == Searcher.FINISHED
    trials = optuna.load_study(study_name="d", storage=storage).get_trials()
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) > 14  # duplicates proposed by the sampler were told the earlier trial's value
    by_point = {}
    for trial in complete:
        by_point.setdefault((trial.params["masking.alpha"], trial.params["masking.padding"]), set()).add(trial.value)
    assert all(len(values) == 1 for values in by_point.values())  # a point always scored the same
    duplicates = [t for t in complete if "objmae_duplicate_of" in t.user_attrs]
    assert len(complete) - len(duplicates) == 14  # the proposals that repeated a trial are marked as such


def test_objective_naming_a_phase_is_what_optuna_optimises(tmp_path):
    """`{metric: top1, phase: 0}` in a two-phase study: Tune and Optuna read transfer0_top1 (the fine-tune's
    final top-1, carried by the last report), not the last report's top1 (the linear probe's)."""
    path = tiny_spec(tmp_path, "ph", "sampler: {kind: tpe}\nnum_samples: 2\nrepeats: 2\n"
                                     "search_space:\n  alpha: {choices: [0.25, 0.5]}\n",
                     objectives="  - {metric: top1, mode: max, phase: 0}\n")
    text = path.read_text().replace(
        "data: {num_images: 64, loader_workers: 0}}\n  resources",
        "data: {num_images: 64, loader_workers: 0}}\n"
        "    - {mode: linear, epochs: 1, warmup_epochs: 0, batch_size: 16, lr: 0.1, data: {num_images: 64}}\n"
        "  resources")
    path.write_text(text)
    spec = load_spec(path)
    assert len(spec.base.transfer) == 2 and spec.objectives[0].key == "transfer0_top1"
    storage = optuna.storages.InMemoryStorage()
    repeater = build_search(spec, storage=storage).searcher
    assert repeater.searcher.metric == "transfer0_top1"
    for i, (finetune, linear) in enumerate([(40.0, 90.0), (60.0, 10.0)]):
        repeater.suggest(f"t{i}")
        repeater.on_trial_complete(f"t{i}", {"top1": linear, "transfer0_top1": finetune, "transfer1_top1": linear})
    [told] = optuna.load_study(study_name="ph", storage=storage).get_trials()
    assert told.values == [50.0]  # the mean of the fine-tune top-1s of the two seeds


def test_padding_that_pads_nothing_is_one_configuration(tmp_path):
    """alpha {1/4, 3/4} x selection {object, mae} x 4 paddings on a 4 x 4 grid: mae at alpha 1/4 (L = 4 <= 8)
    pads no slot, so its four paddings are one trial: 8 (object) + 1 + 4 (mae at L = 12) = 13 distinct trials.
    The searcher hands out 13 and then says it is finished; no mae alpha-1/4 trial runs twice."""
    from ray.tune.search import Searcher

    from objmae_ray.sweep.space import canonical_values, effective_key

    spec = load_spec(tiny_spec(tmp_path, "p", "sampler: {kind: random, seed: 1}\nnum_samples: 16\nsearch_space:\n"
                                              "  alpha: {choices: [0.25, 0.75]}\n"
                                              "  selection: {choices: [object, mae]}\n"
                                              "  padding: {choices: [zero, replicate, random, throwout]}\n"))
    assert canonical_values({"masking.selection": "mae", "masking.alpha": 0.25, "masking.padding": "random"},
                            spec)["masking.padding"] == "zero"
    assert canonical_values({"masking.selection": "mae", "masking.alpha": 0.75, "masking.padding": "random"},
                            spec)["masking.padding"] == "random"
    searcher = build_search(spec, storage=optuna.storages.InMemoryStorage()).searcher
    keys = []
    for i in range(13):
        config = searcher.suggest(f"t{i}")
        keys.append(effective_key(config, spec))
        searcher.on_trial_complete(f"t{i}", {"top1": float(i)})
    assert len(set(keys)) == 13
    assert searcher.suggest("t13") == Searcher.FINISHED
