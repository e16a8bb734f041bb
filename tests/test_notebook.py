"""`notebooks/demo.ipynb` runs top to bottom in a real Jupyter kernel, so it cannot rot.

nbclient executes it in ipykernel's `python3` kernel (jupyter_client starts it with this
interpreter) with a miniature config injected after its `parameters` cell, as papermill would:
a few training steps on the session's prepared corpus, a few neurons scored. The committed file
carries no outputs; the executed copy must show the neuron panel and both continuations of the
steering cell, which this test recomputes through the generation API itself.
"""

import html
import json
import time

import nbformat
from nbclient import NotebookClient
from run_helpers import REPO, workdir_with_data

NOTEBOOK = REPO / "notebooks" / "demo.ipynb"
PARAMETERS_TAG = "parameters"


def _miniature_parameters(workdir, prepared, study) -> str:
    """The injected cell: every parameter the notebook's own cell sets, made small."""
    train = dict(batch_size=8, seq_len=64, warmup_steps=5, log_every=10, eval_every=10,
                 eval_batches=4, checkpoint_every=20)
    interp = dict(num_sequences=16, seq_len=64, window=16, top_k=8, random_k=8, quantile_bins=2,
                  per_bin=2, neurons_per_layer=16, bootstrap_samples=100)
    return "\n".join([
        "# Injected by tests/test_notebook.py: a miniature run",
        f"WORKDIR = {str(workdir)!r}",
        f"STUDY_WORKDIR = {str(study)!r}",
        f"DATA_DIR = {str(prepared / 'tfds')!r}",
        "NUM_STEPS = 20",
        f"TRAIN = {train!r}",
        f"INTERP = {interp!r}",
        "NEW_TOKENS = 12",
        # Twenty steps leave every neuron weak: at 3x its largest activation (the notebook's
        # default) a steer changes nothing yet; at 100x it changes the sampled text.
        "STEER_MULTIPLE = 100.0",
    ])


def _parameters_index(notebook) -> int:
    tagged = [i for i, cell in enumerate(notebook.cells)
              if PARAMETERS_TAG in cell.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"the notebook needs one cell tagged {PARAMETERS_TAG!r}"
    return tagged[0]


def _outputs(notebook) -> tuple[str, str]:
    """(every text/html output joined, every text output and stream joined)."""
    pages, texts = [], []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            pages.append(data.get("text/html", ""))
            texts += [data.get("text/plain", ""), data.get("text/markdown", ""),
                      output.get("text", "")]
    return "\n".join(pages), "\n".join(texts)


def test_the_committed_notebook_has_no_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code
    assert all(not cell.outputs and cell.execution_count is None for cell in code), \
        "clear the notebook's outputs before committing it (outputs are made by running it)"
    _parameters_index(notebook)


def test_the_notebook_runs_top_to_bottom_on_a_miniature_run(prepared, tmp_path, capsys):
    from crate_jax.generation import NeuronSteer, generate, load_trained
    from crate_jax.report.neuron_panel import PANEL_CLASS, ranked_neurons

    workdir = workdir_with_data(prepared, tmp_path)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    injected = nbformat.v4.new_code_cell(
        _miniature_parameters(workdir, prepared, tmp_path / "no_study"),
        metadata={"tags": ["injected-parameters"]})
    notebook.cells.insert(_parameters_index(notebook) + 1, injected)

    client = NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    started = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - started
    with capsys.disabled():
        print(f"\nnotebooks/demo.ipynb ran top to bottom in {seconds:.1f} s (miniature run)")

    pages, texts = _outputs(notebook)
    # The loss curve (a figure) and the per-site score table, rendered as Markdown.
    assert any("image/png" in output.get("data", {})
               for cell in notebook.cells for output in cell.get("outputs", []))
    assert "| ista | 1 |" in texts and "top-and-random" in texts
    # The neuron panel: best, median and worst explained ista neurons of the last layer.
    assert f'class="{PANEL_CLASS}"' in pages
    assert pages.count('<div class="neuron">') == 3
    assert "Explanation:" in pages and "Top records" in pages
    # The steering cell: the best explained neuron's unsteered and steered continuations,
    # exactly what the generation API gives for them.
    parameters: dict = {}
    exec(notebook.cells[_parameters_index(notebook)].source, parameters)
    exec(injected.source, parameters)
    layer = json.loads((workdir / "config.json").read_text())["model"]["num_layers"] - 1
    best = ranked_neurons(workdir, "ista", layer)[0]
    steer = NeuronSteer("ista", layer, best["neuron"],
                        value=parameters["STEER_MULTIPLE"] * best["max_activation"])
    trained = load_trained(workdir)
    sampling = dict(max_new_tokens=parameters["NEW_TOKENS"], temperature=parameters["TEMPERATURE"],
                    top_k=parameters["TOP_K"], seed=0)
    continuations = [generate(trained, parameters["PROMPT"], **sampling, steering=steering)
                     for steering in ([], [steer])]
    assert 'id="steering"' in pages and f"steered: ista:{layer}:{best['neuron']}" in pages
    assert continuations[0] != continuations[1], "the steer changed nothing"
    for text in continuations:
        shown = html.escape(text).replace("\n", "↵")  # the notebook marks newlines
        assert f'<span class="continuation">{shown}</span>' in pages
    # No study in the miniature's STUDY_WORKDIR: the notebook says how to make one.
    assert "configs/ablation.py" in texts
