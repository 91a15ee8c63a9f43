import pandas as pd
import pytest

from tests.conftest import upstream_file
from utils.files import RESULT_COLUMNS, RowWriter, parse_neuron_set, read_csv, read_prompts, read_results

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
    with RowWriter(path, RESULT_COLUMNS, {}, resume=False) as writer:
        for row in rows:
            writer.write(row)
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


def test_resume_refuses_other_settings(tmp_path):
    path = str(tmp_path / "r.csv")
    with RowWriter(path, ["Caption"], {"seed": 1}, resume=False) as writer:
        writer.write({"Caption": "x"})
    with RowWriter(path, ["Caption"], {"seed": 1}, resume=True) as writer:
        assert writer.done == 1
        writer.write({"Caption": "y"})
    assert read_csv(path)["Caption"].tolist() == ["x", "y"]
    with pytest.raises(ValueError, match=r"--resume: .* other settings \(seed\)"):
        RowWriter(path, ["Caption"], {"seed": 2}, resume=True)
