"""The four notebooks: each .ipynb holds exactly the cells of its .py source and the outputs of one full run of
that source on the toy world (small pictures, nothing of the machine it ran on), and each runs top to bottom on a
CPU with the toy world and the quick setting, leaving its pictures as ordinary outputs."""
from __future__ import annotations

import base64
import io
import json
import os
import re
from pathlib import Path

import jupytext
import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from PIL import Image

from lllite.notebook_outputs import MAX_SIDE, clean, scrub_text, shrink_png, source_digest, stored_digest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
NAMES = ["01_dataset_pairing", "02_architecture", "03_training", "04_sampling"]
CELL_TIMEOUT_S = 300
SCREEN_LINES = 25


def cells(notebook) -> list[tuple[str, str]]:
    return [(cell.cell_type, cell.source) for cell in notebook.cells]


@pytest.mark.parametrize("name", NAMES)
def test_the_ipynb_holds_exactly_the_cells_of_its_py_source(name):
    source = jupytext.read(NOTEBOOKS / f"{name}.py")
    stored = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    assert cells(stored) == cells(source), f"notebooks/{name}.ipynb differs from its source: run `jupytext --sync notebooks/{name}.py`"


@pytest.mark.parametrize("name", NAMES)
def test_the_stored_outputs_belong_to_the_current_source(name):
    stored = stored_digest(NOTEBOOKS / f"{name}.ipynb")
    assert stored is not None, f"notebooks/{name}.ipynb stores no outputs: run `python -m lllite.notebook_outputs {name}`"
    assert stored == source_digest(NOTEBOOKS / f"{name}.py"), (
        f"notebooks/{name}.ipynb shows the outputs of an earlier source: run `python -m lllite.notebook_outputs {name}`")


#: Text that would tell of the machine a stored run came from.
MACHINE_TRACES = re.compile(r"/tmp/|/root/|/home/|/Users/|lllite-notebooks-|[A-Z]:\\")


@pytest.mark.parametrize("name", NAMES)
def test_the_stored_outputs_show_small_pictures_and_nothing_of_the_machine_they_ran_on(name):
    stored = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    outputs = [o for c in stored.cells if c.cell_type == "code" for o in c.outputs]
    pictures = [o["data"]["image/png"] for o in outputs if "image/png" in o.get("data", {})]
    assert len(pictures) >= 2, f"notebooks/{name}.ipynb shows {len(pictures)} picture(s)"
    for data in pictures:
        assert max(Image.open(io.BytesIO(base64.b64decode(data))).size) <= MAX_SIDE
    assert not [o for o in outputs if o.get("name") == "stderr"], "progress bars and warnings are not kept"
    text = json.dumps([o for o in outputs if "image/png" not in o.get("data", {})] + [stored.metadata.get("widgets", {})])
    assert not MACHINE_TRACES.search(text), f"notebooks/{name}.ipynb: {MACHINE_TRACES.search(text).group(0)!r}"
    assert (NOTEBOOKS / f"{name}.ipynb").stat().st_size < 4 * 2**20
    widgets = [o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    if widgets:
        state = stored.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
        assert all(w["data"]["application/vnd.jupyter.widget-view+json"]["model_id"] in state for w in widgets)


def test_kept_text_loses_the_scratch_folder_and_the_timings():
    text = "wrote /x/runs/a.safetensors in 12.5 s (4.8 steps/s), 300 seconds; 3 steps; 2 s/it is 0.5 it/s"
    assert scrub_text(text, "/x") == "wrote runs/a.safetensors in … s (… steps/s), … seconds; 3 steps; … s/it is … it/s"


def test_progress_bars_and_stderr_are_not_kept_and_cleaning_twice_changes_nothing():
    bar = {"output_type": "display_data", "metadata": {}, "data": {
        "application/vnd.jupyter.widget-view+json": {"model_id": "m", "version_major": 2, "version_minor": 0},
        "text/plain": "Loading weights:   0%|          | 0/13 [00:00<?, ?it/s]"}}
    table = {"output_type": "display_data", "metadata": {}, "data": {"text/markdown": "| a |", "text/plain": "| a |"}}
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x", outputs=[nbformat.from_dict(o) for o in (
        bar, table, {"output_type": "stream", "name": "stderr", "text": "warning"},
        {"output_type": "stream", "name": "stdout", "text": "done in 3.5 s"})])])
    clean(notebook, "/scratch")
    assert notebook.cells[0].outputs == [table, {"output_type": "stream", "name": "stdout", "text": "done in … s"}]
    before = nbformat.writes(notebook)
    clean(notebook, "/scratch")
    assert nbformat.writes(notebook) == before


def test_kept_pictures_are_shrunk_to_the_longest_side():
    buffer = io.BytesIO()
    Image.new("RGB", (2000, 500), (200, 10, 10)).save(buffer, format="PNG")
    shrunk = Image.open(io.BytesIO(base64.b64decode(shrink_png(base64.b64encode(buffer.getvalue()).decode()))))
    assert shrunk.size == (MAX_SIDE, MAX_SIDE // 4)


@pytest.mark.parametrize("name", NAMES)
def test_the_first_cells_offer_colab_and_install_the_project_there(name):
    source = jupytext.read(NOTEBOOKS / f"{name}.py")
    first_markdown = next(c.source for c in source.cells if c.cell_type == "markdown")
    first_code = next(c.source for c in source.cells if c.cell_type == "code")
    assert f"https://colab.research.google.com/github/lllite/lllite/blob/main/notebooks/{name}.ipynb" in first_markdown
    assert '"google.colab" in sys.modules' in first_code and "git+https://github.com/lllite/lllite" in first_code
    assert "detect_environment(MODEL, anima=ANIMA)" in first_code
    every_source = "\n".join(c.source for c in source.cells)
    assert every_source.count("https://github.com/lllite/lllite") == 1


@pytest.mark.parametrize("name", NAMES)
def test_every_code_cell_fits_on_a_screen(name):
    source = jupytext.read(NOTEBOOKS / f"{name}.py")
    lengths = {index: len(c.source.splitlines()) for index, c in enumerate(source.cells) if c.cell_type == "code"}
    assert max(lengths.values()) <= SCREEN_LINES, f"notebooks/{name}.py: cell lengths {lengths}; move logic into lllite"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """One folder for all four, as a user would run them one after the other."""
    return tmp_path_factory.mktemp("notebooks")


def _failed_cell(notebook) -> str:
    """The failing cell's number and source, and the end of its traceback without terminal colours."""
    for index, cell in enumerate(notebook.cells):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                traceback = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(output.get("traceback", [])))
                tail = "\n".join(traceback.splitlines()[-15:])
                return f"cell {index}:\n{cell.source}\n\n{tail}"
    return "no cell recorded the error"


def _execute(name: str, workdir: Path, **environ: str):
    """Run a notebook's cells in a fresh kernel in quick mode on the CPU; returns the executed notebook, or
    fails the test with the failing cell and the end of its traceback."""
    notebook = jupytext.read(NOTEBOOKS / f"{name}.py")
    # The kernel imports the package from this checkout, whatever else is installed; it runs the toy's
    # tiny kernels on one thread, which beats a thread pool when the cores are shared.
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "LLLITE_QUICK": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": path, "OMP_NUM_THREADS": "1",
           **environ}
    client = NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(workdir)}})
    try:
        client.execute(env=env)
        failure = None
    except CellExecutionError:
        failure = _failed_cell(notebook)
    if failure is not None:  # outside the except block: the report shows the cell, not nbclient's chained error
        pytest.fail(f"notebooks/{name}.py failed at {failure}", pytrace=False)
    return notebook


def _check_outputs(name: str, notebook) -> None:
    outputs = [o.get("data", {}) for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    pictures = [o for o in outputs if "image/png" in o]
    widgets = [o for o in outputs if "application/vnd.jupyter.widget-view+json" in o]
    assert len(pictures) >= 2, f"notebooks/{name} shows {len(pictures)} picture(s) as ordinary outputs"
    assert widgets, f"notebooks/{name} has no widget controls"


@pytest.mark.parametrize("name", NAMES)
def test_the_notebook_runs_top_to_bottom_on_a_cpu_in_quick_mode(name, workdir):
    notebook = _execute(name, workdir)
    _check_outputs(name, notebook)


#: The notebooks with an Anima path (notebook 01 prepares data, the same for both families).
ANIMA_NAMES = ["02_architecture", "03_training", "04_sampling"]


@pytest.fixture(scope="module")
def anima_workdir(tmp_path_factory):
    """The toy Anima's runs in their own folder: its shapes are its own size and its files Anima's."""
    return tmp_path_factory.mktemp("notebooks_anima")


@pytest.mark.parametrize("name", ANIMA_NAMES)
def test_the_notebook_runs_top_to_bottom_on_the_toy_anima_in_quick_mode(name, anima_workdir):
    from lllite.anima import toy

    if name != "02_architecture" and not (toy.WEIGHTS_DIR / "modular_model_index.json").is_file():
        pytest.fail(f"notebooks/{name}.py loads the toy Anima, whose weights are missing from {toy.WEIGHTS_DIR}: "
                    f"create them with `{toy.PRETRAIN_COMMAND}`", pytrace=False)
    notebook = _execute(name, anima_workdir, LLLITE_MODEL="anima-toy")
    assert "model: the toy Anima" in "".join(o.get("text", "") for o in notebook.cells[1].outputs)
    _check_outputs(name, notebook)
