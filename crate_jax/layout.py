"""Where every artifact of a run's workdir and of a study's workdir lives.

The one module that spells these paths; every stage and the report ask it, so a file is renamed
or moved here once. A run's workdir (`RunLayout`):

    data/                          the token arrays and their tokenizer (`DataLayout`):
        tokenizer.json, tokens.json, train.bin, validation.bin,
        planted_validation_truth.npz  (planted corpus only)
    config.json, run_info.json     the config, versions and data manifest of the last `train`
    conversion.json                an imported model's origin (`crate_jax.convert`)
    references.json                reference losses of the validation targets (`train`)
    checkpoints/                   orbax checkpoints, one folder per step
    metrics.jsonl, tensorboard/    training and validation metrics
    interp/                        the `interp` stage:
        inputs.json                what everything below was computed from (`freshness`)
        records/<site>/layer_<l>.jsonl, layer_<l>_statistics.npz, layer_<l>_token_means.npz,
                    layer_<l>_positions.npz
        sparsity.json
        scores/<site>/layer_<l>/   explanations.jsonl, scores.jsonl (`LayerScoresLayout`) of
                                   `interp.explainer`
        explainers/<kind>/<site>/layer_<l>/  the same, of each `interp.compared_explainers`
        summary.json, report.md, ground_truth.json (planted corpus only)
    interp.stale-<N>/              an `interp/` whose inputs changed, moved aside
    sae/<name>/                    the `sae` stage's SAE <name>, one per layer (`SaeLayout`):
        inputs.json, checkpoints/, metrics.jsonl, tensorboard/, evaluation.json
    sae/<name>.stale-<N>/          SAEs whose inputs changed, moved aside

Both hold `.lock`, the lock of their one writer (`lock_file`). A study's workdir
(`StudyLayout`):

    data/                          the token arrays every run shares (copied into each run)
    config.json                    the study's config, saved before any run: the report's settings
    runs/<variant>_seed<seed>/     one run workdir each
    controls/<variant>_seed<seed>/ its untrained control: step 0 of the same run, explained the
                                   same way (`study.controls`)
    study.json                     the manifest: which runs, in which order
    compilation_cache/             JAX's compiled programs, shared by the runs (`compilation_cache`)
    logs/<variant>_seed<seed>.log  what a run and its control printed, where a worker process ran
                                   them (`study.workers`, `worker_log`)
    report/                        ablation.json, ablation.csv, ablation.md, <figure>.png,
                                   index.html (`ReportLayout`)

Each layout is a frozen dataclass of the folder it describes: a layout is a value, building one
touches no file.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

CONFIG_FILE = "config.json"
CHECKPOINTS_DIR = "checkpoints"
METRICS_FILENAME = "metrics.jsonl"
TENSORBOARD_DIRNAME = "tensorboard"
_SCORES_FILE = "scores.jsonl"


def lock_file(workdir: str | Path) -> Path:
    """`<workdir>/.lock`: whoever holds it is the workdir's one writer (`workdir_lock`); a run's
    and a study's workdir alike."""
    return Path(workdir) / ".lock"


def _layer(layer: int) -> str:
    return f"layer_{layer}"


def _layer_number(name: str) -> int:
    """The `l` of a `layer_<l>` folder or file stem."""
    return int(name.removeprefix("layer_"))


@dataclasses.dataclass(frozen=True)
class DataLayout:
    """A `data/` folder: the token arrays and what made them."""

    directory: Path

    @property
    def tokenizer(self) -> Path:
        return self.directory / "tokenizer.json"

    def unfinished_tokenizer(self, number: int) -> Path:
        """Where a tokenizer left by an unfinished preparation is moved aside."""
        return self.directory / f"tokenizer.unfinished-{number}.json"

    @property
    def manifest(self) -> Path:
        """`tokens.json`: what produced the arrays; written last, so it means "complete"."""
        return self.directory / "tokens.json"

    def split(self, name: str) -> Path:
        """The flat token array of split `name` (`train`, `validation`)."""
        return self.directory / f"{name}.bin"

    @property
    def planted_truth(self) -> Path:
        """Planted sources only: per validation token, its features and the entropy floor."""
        return self.directory / "planted_validation_truth.npz"


@dataclasses.dataclass(frozen=True)
class LayerScoresLayout:
    """One (site, layer) folder of `interp/scores/`: two append-only files."""

    directory: Path

    @property
    def explanations(self) -> Path:
        return self.directory / "explanations.jsonl"

    @property
    def scores(self) -> Path:
        return self.directory / _SCORES_FILE


@dataclasses.dataclass(frozen=True)
class SaeLayout:
    """One SAE's layers (`sae/<name>/`, `sae.sites`): trained like a run, in a folder of their
    own (so the metrics writer and checkpointer take it as their workdir)."""

    directory: Path

    @property
    def inputs(self) -> Path:
        """What the SAEs were trained from (`derived_outputs`); written first."""
        return self.directory / "inputs.json"

    @property
    def checkpoints(self) -> Path:
        return self.directory / CHECKPOINTS_DIR

    @property
    def metrics(self) -> Path:
        return self.directory / METRICS_FILENAME

    @property
    def evaluation(self) -> Path:
        """Per layer: L0, FVU, dead fraction, losses spliced and ablated; written last."""
        return self.directory / "evaluation.json"

    def stale(self, number: int) -> Path:
        return self.directory.with_name(f"{self.directory.name}.stale-{number}")


@dataclasses.dataclass(frozen=True)
class RunLayout:
    """A run's workdir (see the module docstring)."""

    workdir: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "workdir", Path(self.workdir))  # a str is welcome too

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def data(self) -> DataLayout:
        return DataLayout(self.data_dir)

    @property
    def config(self) -> Path:
        return self.workdir / CONFIG_FILE

    @property
    def run_info(self) -> Path:
        return self.workdir / "run_info.json"

    @property
    def references(self) -> Path:
        return self.workdir / "references.json"

    @property
    def conversion(self) -> Path:
        """What an imported model was converted from (`crate_jax.convert`); written last."""
        return self.workdir / "conversion.json"

    @property
    def checkpoints(self) -> Path:
        return self.workdir / CHECKPOINTS_DIR

    @property
    def metrics(self) -> Path:
        return self.workdir / METRICS_FILENAME

    @property
    def tensorboard(self) -> Path:
        return self.workdir / TENSORBOARD_DIRNAME

    # -- interp/ --

    @property
    def interp(self) -> Path:
        return self.workdir / "interp"

    def sae(self, name: str) -> SaeLayout:
        """The SAEs named `name` in `sae.sites` (`mlp`, or `mlp_wide` of `mlp_wide=mlp`)."""
        return SaeLayout(self.workdir / "sae" / name)

    def stale_interp(self, number: int) -> Path:
        """Where an `interp/` computed from other inputs is moved aside (never deleted)."""
        return self.workdir / f"{self.interp.name}.stale-{number}"

    @property
    def interp_inputs(self) -> Path:
        return self.interp / "inputs.json"

    @property
    def records_dir(self) -> Path:
        return self.interp / "records"

    def records(self, site: str, layer: int) -> Path:
        """One line per chosen neuron of (site, layer): its top and random records."""
        return self.records_dir / site / f"{_layer(layer)}.jsonl"

    def record_statistics(self, site: str, layer: int) -> Path:
        """Per-neuron max, firing frequency and moments, for the neurons of `records`."""
        return self.records_dir / site / f"{_layer(layer)}_statistics.npz"

    def record_positions(self, site: str, layer: int) -> Path:
        """Where each record of `records` starts in the evaluation text (`records.attach_starts`):
        what the planted truth of a record's tokens is looked up by."""
        return self.records_dir / site / f"{_layer(layer)}_positions.npz"

    def token_means(self, site: str, layer: int) -> Path:
        """Per-token activation sums and counts of the layer's sampled neurons outside their
        records, whence the token reference's predictions (`interp/activations/token_means.py`)."""
        return self.records_dir / site / f"{_layer(layer)}_token_means.npz"

    @property
    def sparsity(self) -> Path:
        """Written last by mining: its presence means every records file is complete."""
        return self.interp / "sparsity.json"

    @property
    def scores_dir(self) -> Path:
        return self.interp / "scores"

    def explainer_scores_dir(self, explainer: str | None = None) -> Path:
        """`scores_dir` for the headline explainer (None), else that compared explainer's."""
        return self.scores_dir if explainer is None else self.interp / "explainers" / explainer

    def compared_explainers(self) -> list[str]:
        """The compared explainers with a scores folder, sorted by name."""
        folder = self.interp / "explainers"
        return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []

    def layer_scores(self, site: str, layer: int,
                     explainer: str | None = None) -> LayerScoresLayout:
        return LayerScoresLayout(self.explainer_scores_dir(explainer) / site / _layer(layer))

    def scores(self, site: str, layer: int) -> Path:
        return self.layer_scores(site, layer).scores

    def scored_sites(self) -> list[str]:
        """The sites with a scores folder, sorted by name."""
        if not self.scores_dir.is_dir():
            return []
        return sorted(path.name for path in self.scores_dir.iterdir() if path.is_dir())

    def scored_layers(self, site: str) -> list[int]:
        """The layers of `site` with a scores folder, in layer order."""
        folder = self.scores_dir / site
        return sorted(_layer_number(path.name) for path in folder.glob(_layer("*"))
                      if path.is_dir())

    def score_files(self, site: str | None = None,
                    explainer: str | None = None) -> list[tuple[str, int, Path]]:
        """`(site, layer, scores.jsonl)` of every scored layer of `site` (None: of every site),
        in the order of their paths (`layer_10` before `layer_2`): the order the report pools
        neurons in, so its bootstrap intervals stay the same); of the headline explainer (None)
        or of a compared one."""
        pattern = f"{'*' if site is None else site}/{_layer('*')}/{_SCORES_FILE}"
        return [(path.parent.parent.name, _layer_number(path.parent.name), path)
                for path in sorted(self.explainer_scores_dir(explainer).glob(pattern))]

    @property
    def summary(self) -> Path:
        return self.interp / "summary.json"

    @property
    def interp_report(self) -> Path:
        return self.interp / "report.md"

    @property
    def ground_truth(self) -> Path:
        return self.interp / "ground_truth.json"


@dataclasses.dataclass(frozen=True)
class ReportLayout:
    """A study's `report/` folder."""

    directory: Path

    @property
    def ablation_json(self) -> Path:
        return self.directory / "ablation.json"

    @property
    def ablation_csv(self) -> Path:
        return self.directory / "ablation.csv"

    @property
    def ablation_markdown(self) -> Path:
        return self.directory / "ablation.md"

    def figure(self, name: str) -> Path:
        return self.directory / f"{name}.png"

    @property
    def page(self) -> Path:
        return self.directory / "index.html"


@dataclasses.dataclass(frozen=True)
class StudyLayout:
    """A study's workdir (see the module docstring)."""

    workdir: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "workdir", Path(self.workdir))  # a str is welcome too

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def config(self) -> Path:
        return self.workdir / CONFIG_FILE

    @property
    def compilation_cache(self) -> Path:
        """The programs compiled by one run, loaded by the others (`compilation_cache`)."""
        return self.workdir / "compilation_cache"

    @property
    def manifest(self) -> Path:
        return self.workdir / "study.json"

    def worker_log(self, name: str) -> Path:
        """What run `name` and its control printed in a worker process (appended to on resume)."""
        return self.workdir / "logs" / f"{name}.log"

    @property
    def runs_dir(self) -> Path:
        return self.workdir / "runs"

    @staticmethod
    def run_name(variant: str, seed: int) -> str:
        return f"{variant}_seed{seed}"

    def run(self, name: str) -> RunLayout:
        return RunLayout(self.runs_dir / name)

    @property
    def controls_dir(self) -> Path:
        return self.workdir / "controls"

    def control(self, name: str) -> RunLayout:
        """The untrained control of run `name`: a run workdir holding only its step 0."""
        return RunLayout(self.controls_dir / name)

    @property
    def report(self) -> ReportLayout:
        return ReportLayout(self.workdir / "report")
