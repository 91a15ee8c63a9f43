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
COST_COLUMNS = ["Seconds", "UNet Sample Forwards", "Sets Scored", "Seeds Skipped"]
THRESHOLD_SUFFIX = ".threshold.json"  # script 2 writes tau_mem beside its score file


def read_csv(path: str, required: tuple[str, ...] = (PROMPT_COLUMN,), what: str = "prompt file") -> pd.DataFrame:
    """A ``;``-separated UTF-8 file (leading unnamed index column optional) with ``required``
    columns; anything else (missing, empty, binary, another encoding, cut off inside a quoted
    field) is a one-line ValueError naming the file."""
    if not os.path.isfile(path):
        raise ValueError(f"{what} {path} not found")
    try:
        frame = pd.read_csv(path, sep=CSV_SEPARATOR, keep_default_na=False, encoding="utf-8")
    except pd.errors.EmptyDataError:
        raise ValueError(f"{what} {path} is empty; expected a ';'-separated CSV with columns {list(required)}") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"{what} {path} is not UTF-8 text (byte {error.start}); expected a ';'-separated CSV") from None
    except (pd.errors.ParserError, ValueError) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ValueError(f"{what} {path} is not a readable ';'-separated CSV: {first}") from None
    frame = frame.drop(columns=[c for c in frame.columns if c.startswith("Unnamed:") or c == ""])
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} {path} has no column {missing[0]!r} (columns: {list(frame.columns)[:8]})")
    return frame.reset_index(drop=True)


def read_prompts(path: str) -> pd.DataFrame:
    """Prompt file with at least ``Caption`` and one row; ``URL`` and ``type`` are kept when present."""
    frame = read_csv(path)
    if frame.empty:
        raise ValueError(f"prompt file {path} has no prompts (a header without rows)")
    return frame


def read_json(path: str, what: str) -> dict:
    """A JSON object from ``path``, or a one-line ValueError naming the file."""
    if not os.path.isfile(path):
        raise ValueError(f"{what} {path} not found")
    try:
        with open(path, encoding="utf-8") as f:
            content = json.load(f)
    except UnicodeDecodeError:
        raise ValueError(f"{what} {path} is not UTF-8 text; expected JSON") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{what} {path} is not valid JSON ({error.msg} at line {error.lineno})") from None
    if not isinstance(content, dict):
        raise ValueError(f"{what} {path}: expected a JSON object, got {type(content).__name__}")
    return content


def threshold_path(scores: str) -> str:
    """Where script 2 writes the threshold of the score file ``scores``."""
    return scores + THRESHOLD_SUFFIX


def read_threshold(path: str) -> float:
    """tau_mem from a threshold JSON (key ``threshold``), or a ValueError saying what is wrong."""
    content = read_json(path, "threshold file")
    if not isinstance(content.get("threshold"), (int, float)):
        raise ValueError(f"threshold file {path} has no numeric key 'threshold'")
    return float(content["threshold"])


def parse_neuron_set(text, widths: list[int] | None, source: str) -> NeuronSet:
    """A results-file cell such as ``[[], [12], [], [], [], [], [3, 9]]`` as a neuron set
    (``widths``: each layer's width, None for any)."""
    try:
        value = ast.literal_eval(text) if isinstance(text, str) else text
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise ValueError(f"{source}: malformed neuron list {str(text)!r:.80}; expected "
                         f"{len(widths) if widths else 'per-layer'} lists of ints") from None
    return validate_neuron_set(value, widths, source)


def read_results(path: str, widths: list[int] | None) -> pd.DataFrame:
    """Results of script 3 (ours or the authors'), neuron columns parsed into neuron sets
    (``widths``: the model's value-layer widths, None to read without the model)."""
    frame = read_csv(path, tuple(RESULT_COLUMNS), what="results file")
    if frame.empty:
        raise ValueError(f"results file {path} has no rows")
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
            previous = read_json(settings_path, "settings file") if os.path.exists(settings_path) else None
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


def rows_of_type(frame: pd.DataFrame, memorization_type: str | None, path: str) -> list[int]:
    """The rows of a prompt file, only those of ``memorization_type`` (VM or TM) when given."""
    if memorization_type is None:
        return list(range(len(frame)))
    if "type" not in frame:
        raise ValueError(f"prompt file {path} has no column 'type' for --memorization_type")
    return [i for i in range(len(frame)) if frame["type"][i] == memorization_type]
