"""0_fetch_assets.py against an HTTP server on 127.0.0.1 started by the test (no internet):
catalogue files checked by SHA-256, training images with every failure a LAION URL shows,
reruns, and a run killed mid-download."""

import hashlib
import importlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from benchmarks.loopback import Loopback, Route, random_image
from tests.conftest import upstream_file
from utils.assets import CATALOGUE, SD14, TRAINING_IMAGES, Asset, mirror_url, select, sscd_checkpoint
from utils.download import DEAD_LINKS, Settings, fetch_file, fetch_images, prompt_urls, read_manifest
from utils.images import original_images

fetch_assets = importlib.import_module("0_fetch_assets")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = Settings(workers=4, timeout=0.5, retries=1, backoff=0.0)


def leftovers(folder) -> list[str]:
    return [name for _, _, names in os.walk(folder) for name in names if name.endswith(".part")]


def pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def test_recorded_hashes_are_those_of_the_authors_files():
    for asset in CATALOGUE.values():
        if asset.sha256 is not None:
            with open(upstream_file(os.path.basename(asset.destination)), "rb") as f:
                assert hashlib.sha256(f.read()).hexdigest() == asset.sha256, asset.name


def test_selection_and_mirror_urls():
    assert select(["sd14", "memorized_prompts"]) == list(SD14)
    assert TRAINING_IMAGES in select(["all"]) and "sscd_disc_large" in select(["all"])
    with pytest.raises(ValueError, match="unknown asset 'sscd'"):
        select(["sscd"])
    asset = CATALOGUE["sscd_disc_mixup"]
    assert mirror_url(asset.url, "http://127.0.0.1:9/") == "http://127.0.0.1:9/sscd-copy-detection/sscd_disc_mixup.torchscript.pt"
    assert asset.source(None) == asset.url


def test_file_fetched_checked_and_not_fetched_again(tmp_path):
    body = b"statistics" * 1000
    asset = Asset("x", "https://origin.example/files/x.pt", "statistics/x.pt", hashlib.sha256(body).hexdigest(), "", "")
    with Loopback({"/files/x.pt": Route(body)}) as server:
        assert fetch_file(asset, str(tmp_path), FAST, server.url("")) == "fetched"
        assert (tmp_path / "statistics/x.pt").read_bytes() == body
        assert fetch_file(asset, str(tmp_path), FAST, server.url("")) == "present"
        assert server.hits["/files/x.pt"] == 1
        (tmp_path / "statistics/x.pt").write_bytes(body[:-1] + b"!")  # fails its check: fetched again
        assert fetch_file(asset, str(tmp_path), FAST, server.url("")) == "fetched"
        assert (tmp_path / "statistics/x.pt").read_bytes() == body and server.hits["/files/x.pt"] == 2


def test_checksum_mismatch_names_the_file_and_both_hashes(tmp_path):
    body, expected = b"not the authors' file", "0" * 64
    asset = Asset("x", "https://origin.example/x.csv", "prompts/x.csv", expected, "", "")
    with Loopback({"/x.csv": Route(body, content_type="text/plain")}) as server:
        with pytest.raises(ValueError) as error:
            fetch_file(asset, str(tmp_path), FAST, server.url(""))
    message = str(error.value)
    path = os.path.join(str(tmp_path), "prompts/x.csv")
    assert path in message and expected in message and hashlib.sha256(body).hexdigest() in message
    assert not os.path.exists(path) and leftovers(tmp_path) == []


@pytest.mark.parametrize("route, status", [
    (Route(b"missing", 404, "text/plain"), "HTTP 404"),
    (Route(b"<html>rate limited</html>", 200, "text/html"), "served as text/html"),
    (Route(b"x" * 5000, sent=1000), "body cut short"),
    (Route(b"x", delay=2.0), "no answer within"),
])
def test_file_failures_leave_nothing_under_the_final_name(tmp_path, route, status):
    asset = Asset("x", "https://origin.example/x.pt", "weights/x.pt", None, "", "")
    with Loopback({"/x.pt": route}) as server:
        with pytest.raises(ValueError, match=status):
            fetch_file(asset, str(tmp_path), FAST, server.url(""))
    assert not os.path.exists(tmp_path / "weights/x.pt") and leftovers(tmp_path) == []


def test_script_fetches_authors_files_and_records_sscd_hash(tmp_path, capsys):
    """The catalogue's own paths on a mirror: checked prompt file and statistics, the SSCD
    checkpoint's hash recorded on first download and enforced afterwards."""
    names = ["memorized_prompts", "statistics_v1_4"]
    routes = {}
    for name in names:
        with open(upstream_file(os.path.basename(CATALOGUE[name].destination)), "rb") as f:
            routes[urlsplit(CATALOGUE[name].url).path] = Route(f.read(), content_type="text/plain")
    sscd_path = urlsplit(CATALOGUE["sscd_disc_large"].url).path
    routes[sscd_path] = Route(b"torchscript weights")
    flags = ["--root", str(tmp_path), "--log_level", "ERROR"]
    with Loopback(routes) as server:
        fetch_assets.main([*names, "sscd_disc_large", "--mirror", server.url(""), *flags])
        assert "memorized_prompts: fetched" in capsys.readouterr().out
        recorded = json.loads((tmp_path / "weights/recorded_sha256.json").read_text())
        assert recorded == {"sscd_disc_large": hashlib.sha256(b"torchscript weights").hexdigest()}
        fetch_assets.main([*names, "sscd_disc_large", "--mirror", server.url(""), *flags])
        assert capsys.readouterr().out.count(": present") == 3
        routes[sscd_path] = Route(b"other weights")  # the server's file changed since
        os.remove(tmp_path / "weights/sscd_disc_large.torchscript.pt")
        with pytest.raises(ValueError, match=f"checksum mismatch.*expected {recorded['sscd_disc_large']}"):
            fetch_assets.main(["sscd_disc_large", "--mirror", server.url(""), *flags])
    for name in names:
        assert (tmp_path / CATALOGUE[name].destination).read_bytes() == routes[urlsplit(CATALOGUE[name].url).path].body


def image_routes() -> tuple[dict[str, Route], dict[str, str]]:
    """Routes for every case and the status each row must end with."""
    routes = {
        "/a.png": Route(random_image(0), content_type="image/png"),
        "/b.jpg": Route(random_image(1, fmt="JPEG"), content_type="image/jpeg"),
        "/gone.jpg": Route(b"gone", 404, "text/plain"),
        "/slow.jpg": Route(random_image(2), content_type="image/jpeg", delay=2.0),
        "/cut.png": Route(random_image(3), content_type="image/png", sent=100),
        "/moved.png": Route(b"", 301, "text/plain", headers={"Location": "/a.png"}),
        "/error_page.jpg": Route(b"<html><body>Image not available</body></html>", 200, "text/html; charset=utf-8"),
        "/busy.png": Route(random_image(4), content_type="image/png", fail_first=1),
        "/broken.png": Route(b"\x89PNG not really", content_type="image/png"),
    }
    expected = {"/a.png": "ok", "/b.jpg": "ok", "/gone.jpg": "http_error", "/slow.jpg": "timeout",
                "/cut.png": "truncated", "/moved.png": "ok", "/error_page.jpg": "wrong_type", "/busy.png": "ok",
                "/broken.png": "decode_error", "": "no_url"}
    return routes, expected


def write_prompts(path, urls: list[str]) -> str:
    pd.DataFrame(dict(Caption=[f"caption {i}" for i in range(len(urls))], URL=urls)).to_csv(path, sep=";")
    return str(path)


def test_training_images_every_case(tmp_path):
    routes, expected = image_routes()
    folder = str(tmp_path / "originals")
    with Loopback(routes) as server:
        paths = list(expected)
        prompts = write_prompts(tmp_path / "p.csv", [server.url(p) if p else "" for p in paths])
        summary = fetch_images(prompt_urls(prompts), folder, FAST)
    manifest = read_manifest(folder)
    assert {row: manifest[row].status for row in manifest} == {i: expected[p] for i, p in enumerate(paths)}
    assert manifest[paths.index("/gone.jpg")].http_code == "404" and manifest[paths.index("/moved.png")].http_code == "200"
    ok = sorted(i for i, p in enumerate(paths) if expected[p] == "ok")
    assert sorted(original_images(folder)) == ok  # named by prompt row, as --originals reads them
    for row in ok:
        path = os.path.join(folder, f"{row:04d}.png")
        with Image.open(path) as image:
            assert image.format == "PNG" and image.mode == "RGB"
        assert manifest[row].sha256 == hashlib.sha256(open(path, "rb").read()).hexdigest()
        assert manifest[row].bytes == os.path.getsize(path)
    source = {"/a.png": 0, "/moved.png": 0, "/busy.png": 4}
    for path, seed in source.items():
        assert np.array_equal(pixels(os.path.join(folder, f"{paths.index(path):04d}.png")),
                              pixels(io.BytesIO(random_image(seed))))
    assert summary["saved"] == len(ok) and summary["dead"] == len(paths) - len(ok)
    assert json.loads(open(os.path.join(folder, DEAD_LINKS)).read()) == summary
    assert {d["row"] for d in summary["dead_rows"]} == set(range(len(paths))) - set(ok)
    assert leftovers(folder) == []


def test_training_images_rerun_fetches_only_what_is_missing_or_fails_its_check(tmp_path):
    routes = {f"/{i}.png": Route(random_image(i), content_type="image/png") for i in range(4)}
    routes["/3.png"] = Route(b"", 404, "text/plain")
    folder = str(tmp_path / "originals")
    with Loopback(routes) as server:
        urls = prompt_urls(write_prompts(tmp_path / "p.csv", [server.url(f"/{i}.png") for i in range(4)]))
        fetch_images(urls, folder, FAST)
        with open(os.path.join(folder, "0001.png"), "r+b") as f:  # damaged after the run
            f.seek(40)
            f.write(b"\0\0\0\0")
        os.remove(os.path.join(folder, "0002.png"))
        fetch_images(urls, folder, FAST)
    assert server.hits == {"/0.png": 1, "/1.png": 2, "/2.png": 2, "/3.png": 2}
    for i in range(3):
        assert np.array_equal(pixels(os.path.join(folder, f"{i:04d}.png")), pixels(io.BytesIO(random_image(i))))


def test_prompt_file_without_url_column_is_refused(tmp_path):
    path = tmp_path / "p.csv"
    pd.DataFrame(dict(Caption=["a"])).to_csv(path, sep=";")
    with pytest.raises(ValueError, match="has no column 'URL'"):
        prompt_urls(str(path))


def snapshot(folder) -> dict[str, bytes]:
    return {name: open(os.path.join(folder, name), "rb").read() for name in sorted(os.listdir(folder))}


def test_killed_run_and_rerun_equal_an_uninterrupted_run(tmp_path):
    """A real subprocess killed with SIGKILL while images trickle in; the rerun completes it."""
    count = 12
    routes = {f"/{i}.png": Route(random_image(i, size=32), content_type="image/png", trickle=0.02) for i in range(count)}
    routes["/dead.png"] = Route(b"", 404, "text/plain")
    with Loopback(routes) as server:
        urls = [server.url(f"/{i}.png") for i in range(count)] + [server.url("/dead.png")]
        prompts = write_prompts(tmp_path / "p.csv", urls)
        command = [sys.executable, os.path.join(ROOT, "0_fetch_assets.py"), "training_images", "--root", str(tmp_path),
                   "--images_from", "p.csv", "--workers", "2", "--log_level", "ERROR"]
        process = subprocess.Popen([*command, "--images_to", "killed"], cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        killed = tmp_path / "killed"
        deadline = time.monotonic() + 60
        while not (killed.is_dir() and any(n.endswith(".png") for n in os.listdir(killed))):  # some saved ...
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)  # ... while others are mid-download
        process.wait()
        for name in os.listdir(killed):  # whatever has a final name is whole
            if name.endswith(".png"):
                row = int(name[:4])
                assert np.array_equal(pixels(killed / name), pixels(io.BytesIO(random_image(row, size=32))))
        assert len([n for n in os.listdir(killed) if n.endswith(".png")]) < count
        settings = Settings(workers=4, timeout=5, retries=0, backoff=0)
        fetch_images(prompt_urls(prompts), str(killed), settings)
        fetch_images(prompt_urls(prompts), str(tmp_path / "whole"), settings)
    assert snapshot(killed) == snapshot(tmp_path / "whole")
    assert len(read_manifest(str(killed))) == count + 1 and leftovers(tmp_path) == []


def test_list_answers_without_torch():
    code = ("import importlib, sys; importlib.import_module('0_fetch_assets').main(['--list']); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=ROOT))
    assert run.returncode == 0, run.stderr
    assert "sscd_disc_large" in run.stdout and "weights/sscd_disc_large.torchscript.pt" in run.stdout


def test_sscd_model_flag_takes_a_checkpoint_name_or_a_path():
    assert sscd_checkpoint("sscd_disc_large", "/r") == ("sscd_disc_large", "/r/weights/sscd_disc_large.torchscript.pt")
    assert sscd_checkpoint("/w/sscd_disc_mixup.torchscript.pt") == ("sscd_disc_mixup", "/w/sscd_disc_mixup.torchscript.pt")


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_tables_name_the_sscd_checkpoint_and_its_copy_threshold(tmp_path, monkeypatch):
    import argparse

    import torch

    from experiments.table1 import paper_measures
    from metrics.embedders import SSCDEmbedder

    monkeypatch.chdir(tmp_path)  # a checkpoint name is looked up in ./weights/
    with pytest.raises(ValueError, match="python 0_fetch_assets.py sscd_disc_large"):
        SSCDEmbedder("sscd_disc_large", torch.device("cpu"))
    stand_in = torch.jit.script(torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten()))
    references = tmp_path / "references"
    references.mkdir()
    Image.open(io.BytesIO(random_image(0))).save(references / "0000.png")
    for name, threshold in [("sscd_disc_large", "0.5"), ("my_sscd", None)]:
        stand_in.save(str(tmp_path / f"{name}.torchscript.pt"))
        args = argparse.Namespace(device="cpu", embedder="sscd", sscd_model=str(tmp_path / f"{name}.torchscript.pt"),
                                  clip_model="none", references=str(references), originals=None, copy_threshold=None)
        if threshold is None:  # a checkpoint without a documented threshold needs one
            with pytest.raises(ValueError, match="no default copy threshold for SSCD checkpoint 'my_sscd'"):
                paper_measures(args)
            continue
        notes = " ".join(paper_measures(args).notes)
        assert f"SSCD checkpoint {name}" in notes and f"a copy above {threshold}" in notes
