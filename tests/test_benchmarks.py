"""The localization benchmark in reduced form: every mode finds the same neurons."""

from benchmarks import localization


def test_testbed_benchmark_modes_agree_and_beat_the_authors_schedule():
    # Raises if a mode finds other neurons than the authors' script 3 restated, or early decisions
    # report other scores than the full computation.
    totals = localization.main(["--vm_only", "--limit", "1", "--batch_sizes", "0,4"])
    assert set(totals) == {"authors", "full 0", "early 0", "full 4", "early 4"}
    assert totals["full 0"]["sets"] == totals["early 0"]["sets"] < totals["authors"]["sets"]
    assert 2 * totals["full 0"]["forwards"] <= totals["authors"]["forwards"]
    assert totals["early 0"]["forwards"] < totals["full 0"]["forwards"] and totals["early 0"]["skipped"] > 0


def test_sd14_layout_benchmark_runs_reduced_on_the_cpu():
    per_set = localization.main(["--unet", "sd14", "--device", "cpu", "--sets_per_call", "1,2", "--repeats", "1"])
    assert set(per_set) == {1, 2} and all(seconds > 0 for seconds in per_set.values())


def test_generation_benchmark_measures_both_ways_of_calling_the_pipeline():
    from benchmarks import generation

    rates = generation.main(["--prompts", "1", "-n", "2", "--steps", "1"])
    assert len(rates) == 2 and all(rate > 0 for rate in rates.values())
