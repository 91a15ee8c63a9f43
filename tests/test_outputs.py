"""Atomic outputs: nothing under a final name until it is complete."""

import os

import pytest

from utils import outputs


def test_file_appears_only_when_complete(tmp_path):
    path = tmp_path / "sub" / "rows.csv"
    with outputs.atomic_file(str(path)) as f:
        f.write("a;b\n")
        assert not path.exists()
        assert [name for name in os.listdir(path.parent) if name.endswith(outputs.PART_SUFFIX)]
    assert path.read_text() == "a;b\n"
    assert os.listdir(path.parent) == ["rows.csv"]


def test_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path):
    path = tmp_path / "x.json"
    outputs.write_json(str(path), {"a": 1})
    with pytest.raises(RuntimeError):
        with outputs.atomic_file(str(path)) as f:
            f.write("{half")
            raise RuntimeError("killed")
    assert path.read_text() == '{\n "a": 1\n}\n'
    assert os.listdir(tmp_path) == ["x.json"]


def test_folder_replaced_whole(tmp_path):
    path = tmp_path / "model"
    for content in ("old", "new"):
        with outputs.atomic_path(str(path)) as temporary:
            os.makedirs(temporary)
            (tmp_path / os.path.basename(temporary) / "weights").write_text(content)
            assert not (path / "weights").exists() or (path / "weights").read_text() == "old"
    assert (path / "weights").read_text() == "new"
    assert sorted(os.listdir(tmp_path)) == ["model"]


def test_two_writers_of_one_file_both_complete(tmp_path):
    """Two writes of one output at once (two runs sharing a folder) keep their own
    temporaries: each completes, the last rename wins, nothing is left behind."""
    path = str(tmp_path / "prompts.csv")
    with outputs.atomic_file(path) as first:
        first.write("first\n")
        with outputs.atomic_file(path) as second:
            second.write("second\n")
        assert open(path).read() == "second\n"
    assert open(path).read() == "first\n"
    assert os.listdir(tmp_path) == ["prompts.csv"]


def test_leftovers_removed(tmp_path):
    (tmp_path / ".img.png.part").write_bytes(b"\x89PNG")
    os.utime(tmp_path / ".img.png.part", (outputs.STARTED - 60,) * 2)  # left by a run killed before this one
    (tmp_path / ".other.png.part").write_bytes(b"\x89PNG")  # another rank of this launch is writing it
    (tmp_path / "img.png").write_bytes(b"done")
    assert outputs.remove_leftovers(str(tmp_path)) == [".img.png.part"]
    assert sorted(os.listdir(tmp_path)) == [".other.png.part", "img.png"]


def test_processes_claiming_one_folder_at_once_agree(tmp_path):
    """The ranks of a launch claim a step's folder together: one makes it, the others continue
    it; none sees a half-made folder without its record."""
    import multiprocessing

    folder = str(tmp_path / "images")
    with multiprocessing.get_context("fork").Pool(4) as pool:
        continued = pool.map(_claim, [folder] * 8, chunksize=1)
    assert sorted(continued) == [False] + [True] * 7
    assert os.listdir(folder) == [outputs.FOLDER_SETTINGS_NAME]


def _claim(folder: str) -> bool:
    return outputs.claim_output(folder, {"seed": 1}, False, folder=True)
