"""The ablation study: every variant, several seeds, one shared corpus, budget and evaluation.

    python -m crate_jax.main --config=configs/ablation.py --workdir=runs/ablation
    python -m crate_jax.main --config=configs/ablation.py:stdlib --workdir=runs/ablation_stdlib

The argument names a corpus and/or a size preset, comma-separated (`planted`, `stdlib`,
`tiny`, `2l`, ...; default `planted,tiny`):
- `planted` (default): the generated corpus with known per-token features and entropy floor
  (`crate_jax/data/planted.py`). Small models get close to its floor on a laptop CPU, so the
  study compares models that learned, and scores neurons against ground truth.
- `stdlib`: the embedded natural-text corpus (Python's standard-library prose). At the CPU
  budget below its models do not reach the count-based bigram reference; the report flags them.

Each variant keeps its own ablation keys (from its config file); the size preset, the corpus
(data settings and vocabulary size), training budget and interpretability settings come from
here and are the same for all, so the comparison is fair. Each variant/seed is an ordinary run
in `runs/<variant>_seed<seed>/`.
"""

from configs import crate

CORPORA = {
    # One token per word of the planted language (123 words + end of text + unknown).
    "planted": dict(data=dict(source="planted", tokenizer="word"), vocab_size=128),
    "stdlib": dict(data=dict(source="stdlib", tokenizer="bpe"), vocab_size=None),
}


def get_config(arg=None):
    parts = [part.strip() for part in (arg or "").split(",") if part.strip()]
    corpora = [part for part in parts if part in CORPORA]
    sizes = [part for part in parts if part not in CORPORA]
    if len(corpora) > 1 or len(sizes) > 1:
        raise ValueError(f"configs/ablation.py:{arg}: give at most one corpus "
                         f"({', '.join(CORPORA)}) and one size preset, e.g. ablation.py:stdlib,2l")
    corpus = corpora[0] if corpora else "planted"
    config = crate.get_config(sizes[0] if sizes else None)
    config.variant = "ablation"
    config.data.update(CORPORA[corpus]["data"])
    if CORPORA[corpus]["vocab_size"]:
        config.model.vocab_size = CORPORA[corpus]["vocab_size"]
    config.study = dict(
        # Config files under configs/: CRATE, ablation A, ablation B, the GPT-2 baseline, and
        # ISTA -> MLP (separates "sparse coding" from "having an MLP").
        variants="crate,no_ista,standard_attention,gpt2,ista_to_mlp",
        seeds="0,1,2",
        # Also explain each run's untrained initialisation (same seed, same evaluation): the
        # score a random network already gets, beside every trained score.
        controls=True,
    )
    if config.size == "tiny" and corpus == "planted":
        # 15 runs and their untrained controls in about half an hour on a 2-core laptop CPU,
        # each run past the bigram reference.
        config.train.update(dict(num_steps=600, warmup_steps=60, eval_every=100,
                                 checkpoint_every=200))
        config.interp.update(dict(num_sequences=128, neurons_per_layer=128))
    elif config.size == "tiny":
        # 15 runs of natural text in about 30 minutes: far too short to beat the bigram.
        config.train.update(dict(num_steps=200, warmup_steps=20, eval_every=100,
                                 checkpoint_every=100))
        config.interp.update(dict(num_sequences=128, neurons_per_layer=128))
    config.stages = "study"
    return config
