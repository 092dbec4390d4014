"""The estimate of a run's remaining training time, from the finished trainings' benchmarks."""

import json

from pertflow.logs import planned_trainings, training_time_left


def write_benchmark(root, model, group, seed, seconds):
    path = root / model / group / f"seed{seed}.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"s\th:m:s\tmax_rss\n{seconds}\t0:00:{seconds}\t100\n")


def test_remaining_time_is_each_models_mean_times_its_unfinished_trainings(tmp_path):
    assert training_time_left(tmp_path, {"scgen": 4}, ("scgen", "A", 0)) is None
    write_benchmark(tmp_path, "scgen", "A", 0, 60)
    write_benchmark(tmp_path, "scgen", "B", 0, 120)
    write_benchmark(tmp_path, "control", "A", 0, 6)
    # scgen: 4 planned, 2 finished, 1 running → 1 left at 90 s; control: 3 left at 6 s; a model
    # with none finished (transformer, 2 planned) at the mean of all finished, 62 s.
    line = training_time_left(tmp_path, {"scgen": 4, "control": 4, "transformer": 2},
                              ("scgen", "C", 0))
    assert line.startswith("4 of 10 trainings done")
    assert "the 6 left need about 3.9 min" in line  # (90 + 3 × 6 + 2 × 62) / 60 = 3.87


def test_planned_trainings_are_the_chosen_splits_times_the_seeds(tmp_path):
    chosen = tmp_path / "held_out_groups.json"
    chosen.write_text(json.dumps({"splits": ["A", "B", "C"]}))
    assert planned_trainings(chosen, ["scgen", "control"], 2) == {"scgen": 6, "control": 6}
