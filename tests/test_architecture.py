"""The layout's promises, read from the source: imports point one way (machinery <- methods <-
metrics <- experiments <- scripts), metrics import no method, and a mitigation registered by
one package reaches script 4 and Table 1 with nothing else changed."""

import ast
import os
import re

import pytest

from experiments import generate
from experiments.rows import chosen_rows, table_rows
from tests.conftest import ROOT, script
from utils import cli
from utils.generation import caption_condition
from utils.methods import DETECTORS, MITIGATIONS, registry

# Each layer may import its own and the layers before it; testbed/ and benchmarks/ stand beside
# the scripts (they may import every layer but the scripts); tests import anything.
LAYERS = ("machinery", "methods", "metrics", "experiments", "scripts")
OUTSIDE = ("testbed", "benchmarks", "tests")
SCRIPT = re.compile(r"\d_\w+$")
GEN = ["--steps", "2", "-n", "2"]


def layer_of(module: str) -> str | None:
    """The layer of a dotted module name of this repository (None: a library's)."""
    top = module.split(".")[0]
    if SCRIPT.fullmatch(top):
        return "scripts"
    if module == "utils.methods" or module.startswith("utils.methods."):
        return "methods"
    return {"utils": "machinery", "metrics": "metrics", "experiments": "experiments"}.get(
        top, top if top in OUTSIDE else None)


def source_files() -> dict[str, str]:
    """Path -> dotted module name of every Python file outside tests/."""
    files = {}
    for folder, dirs, names in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("tests", "__pycache__")]
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                module = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".").removesuffix(".__init__")
                files[path] = module
    return files


def imported(path: str, module: str) -> set[str]:
    """Every module ``path`` imports, at its top or inside a function, or by ``import_module``."""
    tree = ast.parse(open(path).read(), path)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against the importing package
                package = module.split(".")[: -node.level] if not path.endswith("__init__.py") else module.split(".")
                base = ".".join(package + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant)):
            names.add(node.args[0].value)
    return names


def violations() -> list[str]:
    found = []
    for path, module in source_files().items():
        own = layer_of(module)
        for name in imported(path, module):
            target = layer_of(name)
            if target is None or target == own:
                if own == "scripts" and target == "scripts":
                    found.append(f"{module} imports the script {name}")
                continue
            if own in OUTSIDE:
                if target in ("scripts", "tests"):
                    found.append(f"{module} imports {name} ({target})")
                continue
            if target in OUTSIDE or LAYERS.index(target) > LAYERS.index(own):
                found.append(f"{module} ({own}) imports {name} ({target})")
    return sorted(found)


def test_imports_point_one_way():
    assert violations() == []


def test_the_direction_check_finds_a_wrong_arrow(tmp_path, monkeypatch):
    wrong = tmp_path / "utils" / "wrong.py"
    wrong.parent.mkdir()
    wrong.write_text("from experiments import table1\n\ndef f():\n    from utils.methods.nemo import score\n")
    names = imported(str(wrong), "utils.wrong")
    assert {"experiments.table1", "utils.methods.nemo.score"} <= names
    assert layer_of("experiments.table1") == "experiments" and layer_of("utils.methods.nemo.score") == "methods"
    assert layer_of("4_generate_images") == "scripts" and layer_of("utils.files") == "machinery"


def test_registry_entries_name_code_of_their_own_method():
    for entry in [*MITIGATIONS.values(), *DETECTORS.values()]:
        for target in filter(None, (entry.prepare if hasattr(entry, "prepare") else entry.score,
                                    getattr(entry, "neuron_sets", None))):
            assert target.startswith("utils.methods."), target
            assert callable(registry.load(target))


def reversed_caption(pipe, args, _neuron_sets):
    """A throw-away mitigation: each caption's words in reverse order."""
    def prepare(_index, caption, _latents):
        condition = caption_condition(pipe, " ".join(reversed(caption.split())))
        condition.record = dict(caption_used=" ".join(reversed(caption.split())))
        return condition

    return prepare


@pytest.fixture
def throwaway():
    """A mitigation registered as a new method's package would, removed afterwards."""
    entry = registry.Mitigation(
        "reversed_words", "test: each caption's words reversed", f"{__name__}:reversed_caption",
        add_options=lambda parser: parser.add_argument_group("--reversed_words settings").add_argument(
            "--reversed_words_note", default="none", help="a setting of its own"),
        rows=(registry.Row("reversed words", 7.5, "reversed_words"),))
    registry.register(entry)
    yield entry
    registry.unregister(entry.name)


def test_a_registered_mitigation_reaches_script4_and_table1(throwaway, tiny_model_dir, prompt_files, tmp_path, capsys):
    with pytest.raises(SystemExit):
        script[4].main(["--help"])
    help_text = capsys.readouterr().out
    assert "--reversed_words" in help_text and "each caption's words reversed" in help_text
    assert "--reversed_words_note" in help_text
    rows = [row.name for row in table_rows()]
    assert rows.index("reversed words") == rows.index("NeMo") + 1  # by its order, between NeMo and Wanda
    assert [row.name for row in chosen_rows("reversed words", False)] == ["all neurons active", "reversed words"]
    with pytest.raises(SystemExit):
        script[6].main(["--help"])
    assert "reversed words" in " ".join(capsys.readouterr().out.split())  # script 6's --rows lists it

    out = str(tmp_path / "reversed")
    script[4].main(["-v", tiny_model_dir, "--prompts", prompt_files["unmemorized"], "-o", out, "--reversed_words",
                    *GEN])
    records = [line for line in open(os.path.join(out, "prompt_records.jsonl"))]
    assert len(records) == 4 and '"caption_used": "dog green a"' in records[0]
    # Table 1 runs the row as script 4 with its flag
    options = cli.step_args(generate.add_args, **registry.Row("reversed words", 7.5, "reversed_words").generation())
    assert generate.chosen(options) is throwaway


def test_a_name_is_registered_once(throwaway):
    with pytest.raises(ValueError, match="registered twice"):
        registry.register(throwaway)
