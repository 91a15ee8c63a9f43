"""The layout's promises, read from the source: imports point one way (machinery <- methods <-
metrics <- experiments <- scripts), metrics import no method, and a mitigation registered by
one package reaches script 4 and Table 1 with nothing else changed."""

import os

import pytest

from benchmarks.layout import imported, python_files, violations
from experiments import generate
from experiments.rows import chosen_rows, table_rows
from tests.conftest import script
from utils import cli
from utils.generation import caption_condition
from utils.methods import DETECTORS, MITIGATIONS, registry

GEN = ["--steps", "2", "-n", "2"]


def test_imports_point_one_way():
    assert violations(python_files(None)) == []


def test_the_direction_check_finds_wrong_arrows():
    files = {"utils/wrong.py": "from experiments import table1\n\ndef f():\n    from utils.methods.nemo import score\n",
             "metrics/wrong.py": "from utils.methods import wen\nfrom utils import files\n",
             "utils/methods/wen/wrong.py": "from .. import nemo\nfrom metrics import core\n",
             "testbed/wrong.py": "import importlib\nimportlib.import_module('4_generate_images')\n",
             "experiments/right.py": "from metrics import core\nfrom utils.methods import wen\n"}
    assert violations(files) == [
        "metrics.wrong (metrics) imports utils.methods (methods)",
        "metrics.wrong (metrics) imports utils.methods.wen (methods)",
        "testbed.wrong imports 4_generate_images (scripts)",
        "utils.methods.wen.wrong (methods) imports metrics (metrics)",
        "utils.methods.wen.wrong (methods) imports metrics.core (metrics)",
        "utils.wrong (machinery) imports experiments (experiments)",
        "utils.wrong (machinery) imports experiments.table1 (experiments)",
        "utils.wrong (machinery) imports utils.methods.nemo (methods)",
        "utils.wrong (machinery) imports utils.methods.nemo.score (methods)"]
    assert imported("from .. import nemo\n", "utils.methods.wen.wrong") == {"utils.methods", "utils.methods.nemo"}


def test_registry_entries_name_code_of_their_own_method():
    for entry in [*MITIGATIONS.values(), *DETECTORS.values()]:
        for target in filter(None, (entry.prepare if hasattr(entry, "prepare") else entry.score,
                                    getattr(entry, "neuron_sets", None), entry.cost)):
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
    with pytest.raises(ValueError, match="no comma"):
        registry.register_rows(registry.Row("reversed, twice", 7.6))
    assert all("," not in row.name for row in table_rows())  # each can be chosen with --rows


def test_table1_passes_a_methods_setting_to_every_rows_generation():
    from experiments import table1

    assert table1.generation_options(["han_max_iterations=10", "wen_max_iterations = 3"]) == [
        "--han_max_iterations", "10", "--wen_max_iterations", "3"]
    options = cli.step_args(generate.add_args, table1.generation_options(["han_max_iterations=10"]),
                            **registry.Row("x", 1, "han_per_sample").generation())
    assert options.han_max_iterations == 10 and options.han_per_sample
    for bad in ("han_max_iterations", "no_such_setting=1", "han_max_iterations=ten"):
        with pytest.raises(ValueError, match="--generation_option"):
            table1.generation_options([bad])
