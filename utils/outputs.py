"""Atomic outputs: a file or folder appears under its final name only once it is complete.

Everything is first written to a hidden temporary beside its destination
(``.<name>.part``, same folder, so the final ``os.replace`` is atomic on one file system),
then renamed. A killed process leaves at most a ``.part`` temporary, never a truncated
file under the final name; ``remove_leftovers`` clears such temporaries before a rerun.

Torch-free: torch and PIL are imported only by the functions that save their objects.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil

PART_PREFIX, PART_SUFFIX = ".", ".part"


def temporary_path(path: str) -> str:
    """The hidden temporary that ``path`` is written to before its rename."""
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f"{PART_PREFIX}{name}{PART_SUFFIX}")


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
    _discard(temporary)
    try:
        yield temporary
        if os.path.isfile(temporary):
            with open(temporary, "rb") as f:
                os.fsync(f.fileno())
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
    """Remove the ``.part`` temporaries a killed run left in ``folder``; returns their names."""
    if not os.path.isdir(folder):
        return []
    removed = [name for name in os.listdir(folder) if name.startswith(PART_PREFIX) and name.endswith(PART_SUFFIX)]
    for name in removed:
        _discard(os.path.join(folder, name))
    return removed
