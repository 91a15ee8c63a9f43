"""How outputs are written: a file or folder appears under its final name only once it is
complete, beside the settings record that made it (what is in them: ``utils.files``).

Everything is first written to a hidden temporary beside its destination
(``.<name>.<pid>-<n>.part``, same folder, so the final ``os.replace`` is atomic on one file
system; unique to the write, so two processes writing one output never remove each other's),
then renamed. A killed process leaves at most a ``.part`` temporary, never a truncated
file under the final name; ``remove_leftovers`` clears such temporaries before a rerun.

Torch-free: torch and PIL are imported only by the functions that save their objects.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import time

from utils.crashpoints import crash_point

PART_PREFIX, PART_SUFFIX = ".", ".part"
STARTED = time.time()  # when this process started writing outputs: older temporaries are a killed run's
_WRITES = itertools.count()  # numbers this process's temporaries


def temporary_path(path: str) -> str:
    """A new hidden temporary for ``path`` to be written to before its rename."""
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f"{PART_PREFIX}{name}.{os.getpid()}-{next(_WRITES)}{PART_SUFFIX}")


def _discard(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


@contextlib.contextmanager
def atomic_path(path: str):
    """Yield a temporary path to write ``path``'s content to; on success it is renamed to
    ``path`` (replacing an older file), on an exception it is removed.

    The parent folder is created. Works for a file or a folder written at the temporary path.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    temporary = temporary_path(path)
    try:
        yield temporary
        if os.path.isfile(temporary):
            with open(temporary, "rb") as f:
                os.fsync(f.fileno())
        crash_point("file_written")
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        os.replace(temporary, path)
    except BaseException:
        _discard(temporary)
        raise


@contextlib.contextmanager
def atomic_file(path: str, mode: str = "w", **kwargs):
    """``open`` for writing whose content shows under ``path`` only when the block ends."""
    with atomic_path(path) as temporary, open(temporary, mode, **kwargs) as f:
        yield f


def write_text(path: str, text: str) -> None:
    with atomic_file(path, encoding="utf-8") as f:
        f.write(text)


def write_json(path: str, content) -> None:
    write_text(path, json.dumps(content, indent=1) + "\n")


def save_torch(path: str, obj) -> None:
    """``torch.save`` through a temporary."""
    import torch

    with atomic_path(path) as temporary:
        torch.save(obj, temporary)


def save_image(path: str, image, **kwargs) -> None:
    """A PIL image saved through a temporary; the format comes from ``path``'s extension."""
    from PIL import Image

    extension = os.path.splitext(path)[1].lower()
    with atomic_path(path) as temporary:
        image.save(temporary, format=Image.registered_extensions().get(extension), **kwargs)


def save_figure(path: str, figure, **kwargs) -> None:
    """A matplotlib figure saved through a temporary (format from ``path``'s extension)."""
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format=os.path.splitext(path)[1].lstrip(".") or "png", **kwargs)


def remove_leftovers(folder: str) -> list[str]:
    """Remove the ``.part`` temporaries a killed run left in ``folder``: those last written
    before this process started (another rank of this launch may be writing its own now);
    returns their names."""
    if not os.path.isdir(folder):
        return []
    removed = [name for name in os.listdir(folder) if name.startswith(PART_PREFIX) and name.endswith(PART_SUFFIX)
               and os.path.getmtime(os.path.join(folder, name)) < STARTED]
    for name in removed:
        _discard(os.path.join(folder, name))
    return removed


# Settings records: what an output was made with, beside it, so a rerun continues it or refuses.
SETTINGS_SUFFIX = ".settings.json"  # beside a file output
FOLDER_SETTINGS_NAME = "settings.json"  # inside a folder output


def settings_path(output: str, folder: bool = False) -> str:
    """Where the settings record of ``output`` lives (``<file>.settings.json``, ``<folder>/settings.json``)."""
    return os.path.join(output, FOLDER_SETTINGS_NAME) if folder else output + SETTINGS_SUFFIX


def read_settings(output: str, folder: bool = False) -> dict | None:
    """The settings record of ``output``; None when there is none."""
    path = settings_path(output, folder)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError(f"settings record {path} is not valid JSON; remove it or pass --overwrite") from None


def write_settings(output: str, settings: dict, folder: bool = False) -> None:
    write_json(settings_path(output, folder), settings)


def differing_settings(recorded: dict, settings: dict) -> list[str]:
    """The names of the settings whose values differ (a setting only one side has counts)."""
    settings = json.loads(json.dumps(settings))  # tuples as lists, as they are recorded
    absent = object()
    return sorted(k for k in set(recorded) | set(settings) if recorded.get(k, absent) != settings.get(k, absent))


def _shown(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def claim_output(output: str, settings: dict, overwrite: bool, *, folder: bool = False,
                 companions: tuple[str, ...] = (), record: bool = True) -> bool:
    """Make ``output`` (a file or folder) this run's: returns True when it, or what a killed run
    left of it, exists with the same ``settings`` (continue it), False when there is nothing yet.

    Other settings are a one-line ValueError naming them and the way out; ``overwrite`` clears
    the output, its settings record and its ``companions`` (files made with it) instead. The
    settings record is written (for a folder, inside it, creating it) before any result, unless
    ``record`` is False (an output made whole at once, e.g. a model folder, records them itself).
    """
    record_path = settings_path(output, folder)
    exists = [p for p in (output, record_path, *companions) if os.path.lexists(p)]
    if folder and exists == [output] and os.path.isdir(output) and not os.listdir(output):
        exists = []  # an empty folder (made beforehand, e.g. by mkdir) holds nothing to protect
    if overwrite:
        for path in exists:
            _discard(path)
        exists = []
    if exists:
        recorded = read_settings(output, folder)
        if recorded is None:
            raise ValueError(f"{output} exists without a settings record ({record_path}), so it cannot be continued; "
                             "pass another --output, or --overwrite to replace it")
        changed = differing_settings(recorded, settings)
        if changed:
            shown = ", ".join(f"{k} {_shown(recorded.get(k))} -> {_shown(settings.get(k))}"
                              for k in changed[:4]) + (", ..." if len(changed) > 4 else "")
            raise ValueError(f"{output} was made with other settings ({shown}); pass another --output, "
                             "or --overwrite to replace it")
        return True
    if record:
        if folder:
            return not _new_folder(output, settings) and claim_output(output, settings, False, folder=True)
        write_settings(output, settings, folder)
    return False


def _new_folder(output: str, settings: dict) -> bool:
    """Create ``output`` holding only its settings record, in one rename; False when another
    process (a rank of the same launch) created it first."""
    temporary = temporary_path(output)
    os.makedirs(temporary)
    write_settings(temporary, settings, folder=True)
    try:
        os.rename(temporary, output)  # replaces an empty folder, fails on one with content
        return True
    except OSError:
        _discard(temporary)
        return False


def remove_output(output: str, folder: bool = False) -> None:
    """Remove an output and its settings record (what a finished run no longer needs)."""
    for path in (output, settings_path(output, folder)):
        if os.path.lexists(path):
            _discard(path)


def save_model_folder(output: str, pipe, settings: dict, extra_files: dict | None = None) -> None:
    """A diffusers folder written whole: ``pipe.save_pretrained``, its settings record and
    ``extra_files`` (name -> write(path)) into a temporary that is renamed once complete."""
    with atomic_path(output) as temporary:
        pipe.save_pretrained(temporary)
        for name, write in (extra_files or {}).items():
            write(os.path.join(temporary, name))
        with open(settings_path(temporary, folder=True), "w", encoding="utf-8") as f:
            json.dump(settings, f, indent=1)
