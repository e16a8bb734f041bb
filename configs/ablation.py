"""The ablation study: every variant, several seeds, one shared budget and evaluation.

    python -m crate_jax.main --config=configs/ablation.py --workdir=runs/ablation

Each variant keeps its own ablation keys (from its config file); the size preset, data, training
budget and interpretability settings come from here and are the same for all, so the
comparison is fair. Each variant/seed is an ordinary run in `runs/<variant>_seed<seed>/`.
"""

from configs import crate


def get_config(arg=None):
    config = crate.get_config(arg)
    config.variant = "ablation"
    config.study = dict(
        # Config files under configs/: CRATE, ablation A, ablation B, the GPT-2 baseline, and
        # ISTA -> MLP (separates "sparse coding" from "having an MLP").
        variants="crate,no_ista,standard_attention,gpt2,ista_to_mlp",
        seeds="0,1,2",
    )
    if config.size == "tiny":
        # 15 runs on a 2-core laptop CPU: a shorter budget per run than a single `tiny` run,
        # and a seeded sample of 128 neurons per site and layer.
        config.train.update(dict(num_steps=200, warmup_steps=20, eval_every=100,
                                 checkpoint_every=100))
        config.interp.update(dict(num_sequences=128, neurons_per_layer=128))
    config.stages = "study"
    return config
