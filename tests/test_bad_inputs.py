"""Every file a script or metric reads, broken in every usual way, ends in one line that names it."""

import importlib
import os
import shutil

import pytest
import torch
from PIL import Image

from tests.conftest import script

# Broken versions of a ';' CSV (prompt, results and score files alike).
BROKEN_CSV = {
    "empty": b"",
    "header only": b";Caption;URL;type;Initial Neurons;Initial SSIM;Refined Neurons;Refined SSIM;Memorization Score\n",
    "binary": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10",
    "latin-1": ";Caption\n0;caf\xe9 au lait\n".encode("latin-1"),
    "cut in a quoted field": b';Caption;URL\n0;"the famous cat poster;http://x\n',
    "missing column": b";Text\n0;hello\n",
}
# Broken versions of a statistics file.
BROKEN_STATISTICS = {
    "empty": b"",
    "a CSV": b";Caption\n0;a red cat\n",
    "cut off": None,  # the first bytes of a real file, written in the test
    "wrong structure": None,  # a torch file of something else
}
BROKEN_JSON = {"empty": b"", "not JSON": b"threshold = 0.4", "a list": b"[0.4]", "no key": b'{"mean": 0.3}'}


def write(path, content: bytes) -> str:
    path.write_bytes(content)
    return str(path)


def expect_error_naming(path: str, call) -> None:
    with pytest.raises(ValueError) as error:
        call()
    message = str(error.value)
    assert path in message and "\n" not in message, message


@pytest.fixture(scope="module")
def files(tiny_model_dir, prompt_files, tmp_path_factory):
    """Valid inputs the broken ones stand beside: statistics, results, scores, images."""
    root = tmp_path_factory.mktemp("valid")
    statistics = str(root / "stats.pt")
    script[1].main(["--prompts", prompt_files["unmemorized"], "--output", statistics, "-v", tiny_model_dir])
    results = str(root / "results.csv")
    script[3].main(["-v", tiny_model_dir, "-d", prompt_files["memorized"], "-o", results, "--statistics", statistics,
                    "--limit", "1", "--pairwise_ssim_threshold", "0.0", "--samples_per_prompt", "2",
                    "--ssim_kernel_size", "5"])
    images = root / "images"
    images.mkdir()
    for j in range(2):
        Image.new("RGB", (24, 24), (40 * j, 90, 200)).save(images / f"img_0000_{j:02d}.jpg")
    originals = root / "originals"
    originals.mkdir()
    Image.new("RGB", (24, 24), (0, 90, 200)).save(originals / "0000.png")
    from testbed.synthetic_data import write_ordinary_pairs

    pairs = write_ordinary_pairs(str(root / "pairs"), 2, seed=0, draw_seed=0)
    return dict(statistics=statistics, results=results, images=str(images), originals=str(originals),
                pairs=pairs, model=tiny_model_dir, **prompt_files)


CSV_INPUTS = {
    "script 1 --prompts": lambda f, bad: script[1].main(["--prompts", bad, "-v", f["model"], "--output", bad + ".pt"]),
    "script 2 --prompts": lambda f, bad: script[2].main(["--prompts", bad, "-v", f["model"], "--output", bad + ".s.csv",
                                                         "--ssim_kernel_size", "5"]),
    "script 3 -d": lambda f, bad: script[3].main(["-d", bad, "-v", f["model"], "--statistics", f["statistics"],
                                                  "-o", bad + ".r.csv", "--ssim_kernel_size", "5"]),
    "script 4 -f": lambda f, bad: script[4].main(["-f", bad, "-v", f["model"], "-o", bad + "_images",
                                                  "--refined_neurons"]),
    "script 4 --prompts": lambda f, bad: script[4].main(["--prompts", bad, "-v", f["model"], "-o", bad + "_images"]),
    "script 5 -f": lambda f, bad: script[5].main(["-f", bad, "-v", f["model"], "-o", bad + "_model"]),
    "script 6 -d": lambda f, bad: script[6].main(["-d", bad, "-v", f["model"], "--statistics", f["statistics"],
                                                  "-o", bad + "_table", "--embedder", "pixel", "--clip-model", "none",
                                                  "--ssim_kernel_size", "5"]),
    "script 7 -d": lambda f, bad: script[7].main(["-d", bad, "-v", f["model"], "-o", bad + "_pruned"]),
    "metrics.sscd_orig -p": lambda f, bad: importlib.import_module("metrics.sscd_orig").main(
        ["-i", f["images"], "-r", f["images"], "-p", bad, "--embedder", "pixel", "-o", bad + ".json"]),
    "metrics.diversity -p": lambda f, bad: importlib.import_module("metrics.diversity").main(
        ["-i", f["images"], "-p", bad, "--embedder", "pixel", "-o", bad + ".json"]),
    "metrics.detection -m": lambda f, bad: importlib.import_module("metrics.detection").main(
        ["-m", bad, "-u", bad, "--threshold", "0.4", "-o", bad + ".json"]),
    "metrics.plots --results": lambda f, bad: importlib.import_module("metrics.plots").main(
        ["--results", bad, "-o", bad + "_plots"]),
    "metrics.plots -m": lambda f, bad: importlib.import_module("metrics.plots").main(
        ["-m", bad, "-u", bad, "--threshold", "0.4", "-o", bad + "_plots"]),
    "metrics.sscd_gen -p": lambda f, bad: importlib.import_module("metrics.sscd_gen").main(
        ["-i", f["images"], "-r", f["images"], "-p", bad, "--embedder", "pixel", "-o", bad + ".json"]),
    "metrics.alignment -p": lambda f, bad: importlib.import_module("metrics.alignment").main(
        ["-i", f["images"], "-p", bad, "--clip-model", bad + "_no_clip", "-o", bad + ".json"]),
    "script 4 -d (type filter)": lambda f, bad: script[4].main(["-f", f["results"], "-d", bad, "-v", f["model"],
                                                                "-o", bad + "_images", "--memorization_type", "VM"]),
    "script 6 --quality_prompts": lambda f, bad: script[6].main(
        ["-d", f["memorized"], "-v", f["model"], "--statistics", f["statistics"], "-o", bad + "_table",
         "--embedder", "pixel", "--clip-model", "none", "--quality_prompts", bad, "--ssim_kernel_size", "5"]),
    "script 6 --unmemorized_prompts": lambda f, bad: script[6].main(
        ["-d", f["memorized"], "-v", f["model"], "--statistics", f["statistics"], "-o", bad + "_table",
         "--embedder", "pixel", "--clip-model", "none", "--unmemorized_prompts", bad, "--ssim_kernel_size", "5"]),
    "script 8 -d": lambda f, bad: script[8].main(["-d", bad, "-v", f["model"], "--originals", f["originals"],
                                                  "-o", bad + "_attack", "--similarity", "pixel_ssim"]),
    "script 8 --neurons_from": lambda f, bad: script[8].main(
        ["-d", f["memorized"], "-v", f["model"], "--originals", f["originals"], "--neurons_from", bad,
         "-o", bad + "_attack", "--similarity", "pixel_ssim"]),
    "script 9 -d": lambda f, bad: script[9].main(["-d", bad, "-v", f["model"], "--originals", f["originals"],
                                                  "-f", f["results"], "--utility_data", f["pairs"], "-o", bad + "_ft"]),
    "script 9 -f": lambda f, bad: script[9].main(["-d", f["memorized"], "-v", f["model"], "--originals",
                                                  f["originals"], "-f", bad, "--utility_data", f["pairs"],
                                                  "-o", bad + "_ft"]),
    "script 9 --utility_data": lambda f, bad: script[9].main(["-d", f["memorized"], "-v", f["model"], "--originals",
                                                              f["originals"], "-f", f["results"], "--utility_data",
                                                              bad, "-o", bad + "_ft"]),
    "experiments.locality wanda-overlap -d": lambda f, bad: importlib.import_module("experiments.locality").main(
        ["wanda-overlap", "-v", f["model"], "-d", bad, "-o", bad + "_overlap"]),
    "experiments.locality triggers -d": lambda f, bad: importlib.import_module("experiments.locality").main(
        ["triggers", "-v", f["model"], "-d", bad, "--originals", f["originals"], "-o", bad + "_triggers"]),
}


@pytest.mark.parametrize("kind", list(BROKEN_CSV))
@pytest.mark.parametrize("command", list(CSV_INPUTS))
def test_broken_csv_inputs(files, tmp_path, command, kind):
    bad = write(tmp_path / "input.csv", BROKEN_CSV[kind])
    expect_error_naming(bad, lambda: CSV_INPUTS[command](files, bad))


def broken_statistics(tmp_path, kind: str, valid: str) -> str:
    path = tmp_path / "stats.pt"
    if kind == "cut off":
        return write(path, open(valid, "rb").read()[:200])
    if kind == "wrong structure":
        torch.save({"means": [1, 2, 3], "stds": "x"}, path)
        return str(path)
    return write(path, BROKEN_STATISTICS[kind])


@pytest.mark.parametrize("kind", list(BROKEN_STATISTICS))
@pytest.mark.parametrize("command", ["script 3", "script 6"])
def test_broken_statistics(files, tmp_path, command, kind):
    bad = broken_statistics(tmp_path, kind, files["statistics"])
    args = ["-d", files["memorized"], "-v", files["model"], "--statistics", bad, "--ssim_kernel_size", "5",
            "--limit", "1"]
    if command == "script 3":
        call = lambda: script[3].main([*args, "-o", str(tmp_path / "r.csv"), "--samples_per_prompt", "2"])
    else:
        call = lambda: script[6].main([*args, "-o", str(tmp_path / "t"), "--embedder", "pixel", "--clip-model", "none"])
    expect_error_naming(bad, call)


@pytest.mark.parametrize("kind", list(BROKEN_JSON))
def test_broken_threshold_files(files, tmp_path, kind):
    scores = str(tmp_path / "scores.csv")
    write(tmp_path / "scores.csv", b";Caption;Memorization Score;Sample Scores\n0;a;0.5;[0.5]\n1;b;0.2;[0.2]\n")
    bad = write(tmp_path / "threshold.json", BROKEN_JSON[kind])
    detection = importlib.import_module("metrics.detection")
    expect_error_naming(bad, lambda: detection.main(["-m", scores, "-u", scores, "--threshold-file", bad,
                                                     "-o", str(tmp_path / "d.json")]))


@pytest.mark.parametrize("kind", ["missing", "no images", "not an image", "a gap"])
@pytest.mark.parametrize("metric", ["sscd_orig", "diversity", "sscd_gen"])
def test_broken_image_folders(files, tmp_path, metric, kind):
    folder = tmp_path / "images"
    if kind != "missing":
        folder.mkdir()
    if kind == "not an image":
        shutil.copy(os.path.join(files["images"], "img_0000_00.jpg"), folder / "img_0000_00.jpg")
        write(folder / "img_0000_01.jpg", b";Caption\n0;text, not a JPEG\n")
    if kind == "a gap":
        shutil.copy(os.path.join(files["images"], "img_0000_00.jpg"), folder / "img_0000_00.jpg")
        shutil.copy(os.path.join(files["images"], "img_0000_00.jpg"), folder / "img_0001_01.jpg")
    args = {"sscd_orig": ["-r", files["originals"]], "diversity": [], "sscd_gen": ["-r", files["images"]]}[metric]
    module = importlib.import_module(f"metrics.{metric}")
    expect_error_naming(str(folder), lambda: module.main(["-i", str(folder), *args, "--embedder", "pixel",
                                                          "-o", str(tmp_path / "m.json")]))


def test_script2_on_a_prompt_file_without_prompts_prints_no_nan_threshold(files, tmp_path, capsys):
    bad = write(tmp_path / "prompts.csv", b";Caption\n")
    expect_error_naming(bad, lambda: script[2].main(["--prompts", bad, "-v", files["model"], "--output",
                                                     str(tmp_path / "s.csv"), "--ssim_kernel_size", "5"]))
    assert "nan" not in capsys.readouterr().out


def test_broken_table_and_mask_files(files, tmp_path):
    locality = importlib.import_module("experiments.locality")
    (tmp_path / "table").mkdir()
    bad = write(tmp_path / "table" / "table1.json", b'{"rows": ')
    expect_error_naming(bad, lambda: locality.main(["agreement", "--table", str(tmp_path / "table"),
                                                    "-d", files["memorized"]]))
    from utils.methods.wanda import pruning as wanda

    bad = write(tmp_path / "masks.pt", b"\x80\x04not a torch file")
    expect_error_naming(bad, lambda: wanda.load_masks(bad))


def test_an_unreadable_original_image_is_named(files, tmp_path):
    originals = tmp_path / "originals"
    originals.mkdir()
    bad = write(originals / "0000.png", b"not a PNG")
    module = importlib.import_module("metrics.sscd_orig")
    expect_error_naming(bad, lambda: module.main(["-i", files["images"], "-r", str(originals), "--embedder", "pixel",
                                                  "-o", str(tmp_path / "m.json")]))


@pytest.mark.parametrize("command", ["script 8", "script 9", "triggers"])
def test_an_originals_folder_without_images_of_the_prompts_is_named(files, tmp_path, command):
    empty = tmp_path / "originals"
    empty.mkdir()
    call = {"script 8": lambda: script[8].main(["-d", files["memorized"], "-v", files["model"], "--originals", str(empty),
                                                "-o", str(tmp_path / "a")]),
            "script 9": lambda: script[9].main(["-d", files["memorized"], "-v", files["model"], "--originals", str(empty),
                                                "-f", files["results"], "--utility_data", files["pairs"],
                                                "-o", str(tmp_path / "f")]),
            "triggers": lambda: importlib.import_module("experiments.locality").main(
                ["triggers", "-v", files["model"], "-d", files["memorized"], "--originals", str(empty)])}[command]
    expect_error_naming(str(empty), call)
