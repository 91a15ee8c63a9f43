"""The rows of the paper's Table 1: the plain row and every row the methods register
(``utils.methods.registry``), in the table's order. Torch-free, so the Table-1 command can
list them in ``--help`` at once."""

from __future__ import annotations

from utils.methods import ROWS
from utils.methods.registry import ALL_REFINED, FINETUNED, GIVEN, WANDA, Row

# the rows' vocabulary, the registry's names among it, for the experiments
__all__ = ["ALL_REFINED", "FINETUNED", "GIVEN", "IN_P", "PLAIN", "WANDA", "Row", "chosen_rows", "folder_name",
           "table_rows"]

PLAIN = "all neurons active"
IN_P = ", prompts in P"  # the second row of a pruned model: the prompts it was pruned on


def table_rows() -> list[Row]:
    """Every row: nothing changed first (the other rows' SSCD_Gen compares with it), then the
    registered rows by their ``order``."""
    return [Row(PLAIN, 0)] + sorted(ROWS, key=lambda row: row.order)


def chosen_rows(names: str | None, with_dori: bool) -> list[Row]:
    """The rows named in ``names`` (comma-separated; None: all, the fine-tuned model's only
    ``with_dori``), the plain row always."""
    rows = table_rows()
    if names is None:
        return [row for row in rows if with_dori or row.model != FINETUNED]
    wanted = [name.strip() for name in names.split(",")]
    known = {row.name: row for row in rows}
    unknown = [name for name in wanted if name not in known]
    if unknown:
        raise ValueError(f"--rows: unknown row {unknown[0]!r}; rows are {list(known)}")
    return [row for row in rows if row.name == PLAIN or row.name in wanted]


def folder_name(row: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in row.lower()).strip("_")
