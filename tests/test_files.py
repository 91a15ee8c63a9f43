import json
import os

import pandas as pd
import pytest

from tests.conftest import upstream_file
from utils.files import RESULT_COLUMNS, RowWriter, parse_neuron_set, read_csv, read_prompts, read_results, rows_of_type

SD14_WIDTHS = [320, 320, 640, 640, 1280, 1280, 1280]


@pytest.mark.parametrize("name,rows", [("memorized_laion_prompts.csv", 500), ("unmemorized_laion_prompts.csv", 500)])
def test_authors_prompt_files_read(name, rows):
    frame = read_prompts(upstream_file(name))
    assert len(frame) == rows and "Caption" in frame and "URL" in frame
    assert not any(c.startswith("Unnamed") for c in frame.columns)


def test_authors_memorization_types():
    types = read_prompts(upstream_file("memorized_laion_prompts.csv"))["type"].value_counts()
    assert (types["VM"], types["TM"]) == (112, 388)


def test_results_round_trip_in_the_authors_column_format(tmp_path):
    captions = read_prompts(upstream_file("memorized_laion_prompts.csv"))["Caption"][:3].tolist()
    rows = [dict(Caption=c, URL="u;with;separators", **{
        "Initial Neurons": [[i], [], [], [], [], [], [1279]], "Initial SSIM": 0.41,
        "Refined Neurons": [[], [], [], [], [], [], [1279]], "Refined SSIM": 0.3}) for i, c in enumerate(captions)]
    path = str(tmp_path / "r.csv")
    with RowWriter(path, RESULT_COLUMNS, {}) as writer:
        for i, row in enumerate(rows):
            writer.write(i, row)
    frame = read_results(path, SD14_WIDTHS)
    assert frame["Caption"].tolist() == captions and frame["URL"][0] == "u;with;separators"
    assert frame["Initial Neurons"][2] == [[2], [], [], [], [], [], [1279]]
    # pandas reads it as an authors' file written by their csv.DictWriter-based script
    assert list(pd.read_csv(path, sep=";").columns)[1:] == RESULT_COLUMNS


def test_missing_file_and_column_are_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match=r"prompt file .*nope.csv not found"):
        read_prompts(str(tmp_path / "nope.csv"))
    (tmp_path / "p.csv").write_text(";Text\n0;hello\n")
    with pytest.raises(ValueError, match=r"has no column 'Caption' \(columns: \['Text'\]\)"):
        read_prompts(str(tmp_path / "p.csv"))


@pytest.mark.parametrize("cell", ["[[1], [2]", "[[1], [], [], [], [], [], [1280]]", "7", "[[1.5], [], [], [], [], [], []]"])
def test_malformed_neuron_lists_name_the_cell(cell):
    with pytest.raises(ValueError, match="row 3 column 'Refined Neurons'"):
        parse_neuron_set(cell, SD14_WIDTHS, "r.csv row 3 column 'Refined Neurons'")


def test_rows_take_the_final_name_only_when_the_run_ends(tmp_path):
    path = str(tmp_path / "r.csv")
    with pytest.raises(RuntimeError):
        with RowWriter(path, ["Caption"], {"seed": 1}) as writer:
            writer.write(0, {"Caption": "x"})
            raise RuntimeError("killed")
    assert not os.path.exists(path) and os.path.exists(path + ".partial")
    with open(path + ".partial", "a") as f:
        f.write("1;half a ro")  # what a killed process leaves
    with RowWriter(path, ["Caption"], {"seed": 1}) as writer:  # same settings: continued
        assert writer.done == {0}
        writer.write(1, {"Caption": "y"})
    assert read_csv(path)["Caption"].tolist() == ["x", "y"] and not os.path.exists(path + ".partial")
    with RowWriter(path, ["Caption"], {"seed": 1}) as writer:  # a larger --limit continues the final file
        assert writer.done == {0, 1}
        writer.write(2, {"Caption": "z"})
    assert read_csv(path)["Caption"].tolist() == ["x", "y", "z"]


def test_other_settings_are_refused_untouched_and_overwrite_clears(tmp_path):
    path = str(tmp_path / "r.csv")
    companion = tmp_path / "r.csv.threshold.json"
    with RowWriter(path, ["Caption"], {"seed": 1, "steps": 5}) as writer:
        writer.write(0, {"Caption": "x"})
    companion.write_text("{}")
    before = open(path).read()
    with pytest.raises(ValueError, match=r"other settings \(seed 1 -> 2\); pass another --output, or --overwrite"):
        RowWriter(path, ["Caption"], {"seed": 2, "steps": 5}, companions=(str(companion),))
    assert open(path).read() == before and companion.exists()
    with RowWriter(path, ["Caption"], {"seed": 2, "steps": 5}, overwrite=True, companions=(str(companion),)) as writer:
        assert writer.done == set()
        writer.write(0, {"Caption": "new"})
    assert read_csv(path)["Caption"].tolist() == ["new"] and not companion.exists()
    assert json.load(open(path + ".settings.json")) == {"seed": 2, "steps": 5}


def test_an_output_without_settings_record_is_refused(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text(";Caption\n0;x\n")
    with pytest.raises(ValueError, match="without a settings record"):
        RowWriter(str(path), ["Caption"], {})


@pytest.mark.parametrize("cell", ["", "nan", "0.3x"])
def test_score_cells_that_are_not_numbers_name_file_and_column(tmp_path, cell):
    from metrics.detection import read_scores

    path = tmp_path / "scores.csv"
    path.write_text(f";Caption;Memorization Score\n0;a;0.2\n1;b;{cell}\n")
    with pytest.raises(ValueError, match=r"scores.csv column 'Memorization Score' row 1"):
        read_scores(str(path))


def test_shards_are_disjoint_and_merge_into_the_single_process_file(tmp_path):
    from utils.distributed import Shard
    from utils.files import merge_rows

    shards = [Shard(r, 3) for r in range(3)]
    assert sorted(i for s in shards for i in s.indices(10)) == list(range(10))
    assert shards[1].indices(10, limit=6) == [1, 4]
    single = str(tmp_path / "single.csv")
    with RowWriter(single, ["Caption"], {}) as writer:
        for i in range(7):
            writer.write(i, {"Caption": f"p;{i}"})
    merged = str(tmp_path / "merged.csv")
    finished = []
    for shard in shards:
        with RowWriter(shard.part(merged), ["Caption"], {}) as writer:
            for i in shard.indices(7):
                writer.write(i, {"Caption": f"p;{i}"})
        finished.append(shard.finish(merged, merge_rows))
    assert finished == [False, False, True]
    assert open(merged).read() == open(single).read()


def test_neuron_lists_with_duplicates_read_as_the_sets_they_deactivate():
    """The authors' lists name a neuron twice when it is both a z-outlier and in the top k."""
    import random

    from utils.layers import count_neurons, distinct_neurons
    from utils.methods.nemo import selection

    with_duplicates = [[5, 7, 5], [], [2, 2], [], [], [], [9]]
    without = [[5, 7], [], [2], [], [], [], [9]]
    assert parse_neuron_set(str(with_duplicates), SD14_WIDTHS, "cell") == with_duplicates
    assert distinct_neurons(with_duplicates) == without and count_neurons(with_duplicates) == 4
    # the authors' global selections count every entry: a neuron named twice counts twice
    assert selection.neuron_frequencies([with_duplicates])[(0, 5)] == 2
    assert selection.top_k_sets([with_duplicates, without, without], 1) == without
    drawn = selection.random_like(with_duplicates, SD14_WIDTHS, random.Random(0))
    assert [len(layer) for layer in drawn] == [2, 0, 1, 0, 0, 0, 1]


def test_rows_of_type_filters_by_type_and_names_a_file_without_the_column():
    frame = pd.DataFrame({"Caption": ["a", "b", "c"], "type": ["VM", "TM", "VM"]})
    assert rows_of_type(frame, "VM", "p.csv") == [0, 2]
    assert rows_of_type(frame, None, "p.csv") == [0, 1, 2]
    with pytest.raises(ValueError, match="p.csv has no column 'type'"):
        rows_of_type(frame.drop(columns="type"), "TM", "p.csv")
