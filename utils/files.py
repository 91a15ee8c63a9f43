"""Prompt files, results files and run settings in the authors' formats (SPEC §4, §7)."""

from __future__ import annotations

import ast
import csv
import json
import os

import pandas as pd

from utils.layers import NeuronSet, validate_neuron_set

CSV_SEPARATOR = ";"  # the authors' prompt and results files
PROMPT_COLUMN = "Caption"
# Results columns of the authors' script 3, then the cost figures this suite adds.
RESULT_COLUMNS = ["Caption", "URL", "Initial Neurons", "Initial SSIM", "Refined Neurons", "Refined SSIM"]
COST_COLUMNS = ["Seconds", "UNet Sample Forwards", "Sets Scored"]
THRESHOLD_SUFFIX = ".threshold.json"  # script 2 writes tau_mem beside its score file


def read_csv(path: str, required: tuple[str, ...] = (PROMPT_COLUMN,), what: str = "prompt file") -> pd.DataFrame:
    """A ``;``-separated file (leading unnamed index column optional) with ``required`` columns."""
    if not os.path.isfile(path):
        raise ValueError(f"{what} {path} not found")
    frame = pd.read_csv(path, sep=CSV_SEPARATOR, keep_default_na=False)
    frame = frame.drop(columns=[c for c in frame.columns if c.startswith("Unnamed:") or c == ""])
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} {path} has no column {missing[0]!r} (columns: {list(frame.columns)})")
    return frame.reset_index(drop=True)


def read_prompts(path: str) -> pd.DataFrame:
    """Prompt file with at least ``Caption``; ``URL`` and ``type`` are kept when present."""
    return read_csv(path)


def threshold_path(scores: str) -> str:
    """Where script 2 writes the threshold of the score file ``scores``."""
    return scores + THRESHOLD_SUFFIX


def read_threshold(path: str) -> float:
    """tau_mem from a threshold JSON (key ``threshold``), or a ValueError saying what is wrong."""
    if not os.path.isfile(path):
        raise ValueError(f"threshold file {path} not found")
    with open(path) as f:
        content = json.load(f)
    if "threshold" not in content:
        raise ValueError(f"threshold file {path} has no key 'threshold'")
    return float(content["threshold"])


def parse_neuron_set(text, widths: list[int], source: str) -> NeuronSet:
    """A results-file cell such as ``[[], [12], [], [], [], [], [3, 9]]`` as a neuron set."""
    try:
        value = ast.literal_eval(text) if isinstance(text, str) else text
    except (ValueError, SyntaxError):
        raise ValueError(f"{source}: malformed neuron list {str(text)!r:.80}; expected {len(widths)} lists of ints")
    return validate_neuron_set(value, widths, source)


def read_results(path: str, widths: list[int]) -> pd.DataFrame:
    """Results of script 3 (ours or the authors'), neuron columns parsed into neuron sets."""
    frame = read_csv(path, tuple(RESULT_COLUMNS), what="results file")
    for column in ("Initial Neurons", "Refined Neurons"):
        frame[column] = [parse_neuron_set(cell, widths, f"{path} row {i} column {column!r}")
                         for i, cell in enumerate(frame[column])]
    return frame


class RowWriter:
    """Appends rows to a ``;`` CSV, flushed one by one, so a killed run loses no finished row.

    The first column is the row's prompt index. ``settings`` are kept in
    ``<path>.settings.json``; with ``resume`` the rows already written are kept (``done``
    holds their indices) and different settings are refused.
    """

    def __init__(self, path: str, columns: list[str], settings: dict, resume: bool):
        self.path, self.columns = path, columns
        settings_path = path + ".settings.json"
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.done: set[int] = set()
        if resume and os.path.exists(path):
            previous = json.load(open(settings_path)) if os.path.exists(settings_path) else None
            if previous != json.loads(json.dumps(settings)):
                changed = sorted(k for k in settings if previous is None or previous.get(k) != settings[k])
                raise ValueError(f"--resume: {path} was written with other settings ({', '.join(changed)}); "
                                 "use the same flags or a new --output")
            drop_partial_line(path)
            with open(path, newline="") as f:
                self.done = {int(row[0]) for row in list(csv.reader(f, delimiter=CSV_SEPARATOR))[1:]}
            self.file = open(path, "a", newline="")
            self.writer = csv.writer(self.file, delimiter=CSV_SEPARATOR)
        else:
            self.file = open(path, "w", newline="")
            self.writer = csv.writer(self.file, delimiter=CSV_SEPARATOR)
            self._write([""] + columns)
            with open(settings_path, "w") as f:
                json.dump(settings, f, indent=1)

    def _write(self, cells: list) -> None:
        self.writer.writerow(cells)
        self.file.flush()
        os.fsync(self.file.fileno())

    def write(self, index: int, row: dict) -> None:
        self._write([index] + [row[c] for c in self.columns])

    def close(self) -> None:
        self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def drop_partial_line(path: str) -> None:
    """Cut a row a killed process left half written."""
    with open(path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


def merge_rows(parts: list[str], path: str) -> None:
    """Write the rows of ``parts`` (RowWriter files with one header) to ``path``, by index."""
    rows, header = [], None
    for part in parts:
        with open(part, newline="") as f:
            lines = list(csv.reader(f, delimiter=CSV_SEPARATOR))
        header = lines[0]
        rows += lines[1:]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, delimiter=CSV_SEPARATOR)
        writer.writerow(header)
        writer.writerows(sorted(rows, key=lambda row: int(row[0])))
