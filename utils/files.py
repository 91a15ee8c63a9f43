"""What the files contain: prompt files, results files and score files in the authors' formats
(SPEC §4, §7), read and checked, and result rows appended as each prompt finishes. How any
output is written (atomically, with its settings record) is ``utils.outputs``."""

from __future__ import annotations

import ast
import csv
import json
import os
import shutil

import pandas as pd

from utils.crashpoints import crash_point
from utils.layers import NeuronSet, validate_neuron_set
from utils.outputs import atomic_file, claim_output

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


def numeric_columns(frame: pd.DataFrame, columns: tuple[str, ...], path: str, what: str) -> pd.DataFrame:
    """``frame`` with ``columns`` as floats; an empty, NaN or non-numeric cell is a one-line
    ValueError naming the file, the column and the row."""
    for column in columns:
        values = pd.to_numeric(frame[column].replace("", float("nan")), errors="coerce").astype(float)
        bad = [i for i, v in enumerate(values) if v != v]
        if bad:
            raise ValueError(f"{what} {path} column {column!r} row {bad[0]}: {frame[column][bad[0]]!r} is not a number "
                             f"({len(bad)} such cell(s)); expected a finished run's numbers")
        frame[column] = values
    return frame


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
    numeric_columns(frame, ("Initial SSIM", "Refined SSIM"), path, "results file")
    for column in ("Initial Neurons", "Refined Neurons"):
        frame[column] = [parse_neuron_set(cell, widths, f"{path} row {i} column {column!r}")
                         for i, cell in enumerate(frame[column])]
    return frame


PARTIAL_SUFFIX = ".partial"  # the rows of an unfinished run, renamed to the final name at its end


def require_neurons(rows: list[int], neurons: dict, path: str) -> None:
    """Every prompt row to be treated with its neurons has a row in the results file ``path``
    (a prompt without one would silently run unmitigated)."""
    missing = [i for i in rows if i not in neurons]
    if missing:
        raise ValueError(f"results file {path} has no neurons for prompt row(s) {missing[:10]}"
                         f"{' ...' if len(missing) > 10 else ''} ({len(neurons)} rows); run script 3 on them "
                         "or pass --limit / --memorization_type to leave them out")


class RowWriter:
    """Writes rows of a ``;`` CSV to ``<path>.partial``, flushed one by one so a killed run loses
    no finished row, and renames it to ``path`` when the run ends without an error.

    The first column is the row's prompt index. ``settings`` are recorded in
    ``<path>.settings.json`` (``utils.outputs.claim_output``): an earlier run with the same
    settings is continued (``done`` holds the indices of its rows, final or partial), one with
    other settings refused with a one-line error, unless ``overwrite`` clears it (and
    ``companions``, files made from it). Construct it after every input is checked.
    """

    def __init__(self, path: str, columns: list[str], settings: dict, overwrite: bool = False,
                 companions: tuple[str, ...] = ()):
        self.path, self.partial, self.columns = path, path + PARTIAL_SUFFIX, columns
        claim_output(path, settings, overwrite, companions=(self.partial, *companions))
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if os.path.exists(self.partial):
            drop_partial_line(self.partial)  # a row a kill cut off
        elif os.path.exists(path):
            shutil.copyfile(path, self.partial)  # continued (e.g. a larger --limit): the old rows stay final
        self.file = open(self.partial, "a", newline="")
        self.writer = csv.writer(self.file, delimiter=CSV_SEPARATOR)
        if self.file.tell() == 0:
            self._write([""] + columns)
        with open(self.partial, newline="") as f:
            self.done: set[int] = {int(row[0]) for row in list(csv.reader(f, delimiter=CSV_SEPARATOR))[1:]}

    def _write(self, cells: list) -> None:
        self.writer.writerow(cells)
        self.file.flush()
        os.fsync(self.file.fileno())

    def write(self, index: int, row: dict) -> None:
        self._write([index] + [row[c] for c in self.columns])
        self.done.add(index)
        crash_point("row_written")

    def close(self, complete: bool = True) -> None:
        """Close; ``complete``: the run ended, so the rows take the final name."""
        self.file.close()
        if complete:
            os.replace(self.partial, self.path)

    def __enter__(self):
        return self

    def __exit__(self, error_type, *_):
        self.close(complete=error_type is None)


def drop_partial_line(path: str) -> None:
    """Cut a row a killed process left half written."""
    with open(path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


def written_rows(path: str) -> pd.DataFrame:
    """The rows a ``RowWriter`` has written to ``path`` (its unfinished ``.partial`` first),
    indexed by prompt; empty when there are none (a line a kill cut off is left out)."""
    for candidate in (path + PARTIAL_SUFFIX, path):
        if os.path.isfile(candidate) and os.path.getsize(candidate):
            return pd.read_csv(candidate, sep=CSV_SEPARATOR, index_col=0, keep_default_na=False, on_bad_lines="skip")
    return pd.DataFrame()


def merge_rows(parts: list[str], path: str) -> None:
    """Write the rows of ``parts`` (RowWriter files with one header) to ``path``, by index."""
    rows, header = [], None
    for part in parts:
        with open(part, newline="") as f:
            lines = list(csv.reader(f, delimiter=CSV_SEPARATOR))
        header = lines[0]
        rows += lines[1:]
    with atomic_file(path, newline="") as f:
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
