"""CRATE (the paper's white-box LM): MSSA attention and a two-step ISTA block, no residual.

This is the base config; every ablation imports it and changes only the keys it ablates.
`get_config(arg)` takes a size preset: `tiny` (default; trains on a laptop CPU), `1l`, `2l`,
`3l` (d=128, 4 heads), `s` (6 layers) and `b` (12 layers) (d=768, 12 heads). Use it as
`--config=configs/crate.py:2l`; any key can be overridden, e.g. `--config.model.num_layers=4`.
"""

import ml_collections

# Paper sizes share GPT-2's vocabulary (padded to 50304) and context of 1024 tokens.
SIZES = {
    "tiny": dict(vocab_size=8192, max_len=256, num_layers=2, embed_dim=128, num_heads=4),
    "1l": dict(vocab_size=50304, max_len=1024, num_layers=1, embed_dim=128, num_heads=4),
    "2l": dict(vocab_size=50304, max_len=1024, num_layers=2, embed_dim=128, num_heads=4),
    "3l": dict(vocab_size=50304, max_len=1024, num_layers=3, embed_dim=128, num_heads=4),
    "s": dict(vocab_size=50304, max_len=1024, num_layers=6, embed_dim=768, num_heads=12),
    "b": dict(vocab_size=50304, max_len=1024, num_layers=12, embed_dim=768, num_heads=12),
}

# How much held-out text and how many neurons per layer (0 = all) the evaluation covers.
INTERPRETABILITY = {
    "tiny": dict(num_sequences=256, neurons_per_layer=0),
    "paper": dict(num_sequences=2048, neurons_per_layer=200),
}

# Training defaults: `tiny` finishes in minutes on a laptop CPU; the paper sizes are a starting
# point for accelerators (override any key, e.g. --config.train.num_steps=20000).
TRAINING = {
    "tiny": dict(num_steps=600, batch_size=16, seq_len=128, learning_rate=3e-3, warmup_steps=60,
                 log_every=50, eval_every=200, eval_batches=8, checkpoint_every=200),
    "paper": dict(num_steps=100_000, batch_size=64, seq_len=1024, learning_rate=6e-4,
                  warmup_steps=2000, log_every=100, eval_every=2000, eval_batches=40,
                  checkpoint_every=2000),
}


def get_config(arg=None):
    size = arg or "tiny"
    if size not in SIZES:
        raise ValueError(f"unknown size preset {size!r}; choose one of {', '.join(SIZES)} "
                         f"(e.g. --config=configs/crate.py:2l)")

    config = ml_collections.ConfigDict()
    config.variant = "crate"
    config.size = size
    config.seed = 0

    config.model = ml_collections.ConfigDict(dict(
        attention="mssa",        # mssa | mhsa
        attention_impl="auto",   # auto (cuDNN flash attention on Ampere+ NVIDIA GPUs in bfloat16,
                                 # blockwise on a CPU, XLA elsewhere) | xla | cudnn | blockwise
                                 # (XLA by blocks of queries): speed only, same function
        head_impl="auto",        # auto (chunked on a CPU, logits elsewhere) | logits | chunked
                                 # (the tied head's training loss a block of positions at a
                                 # time): speed only
        sparse_block="ista",     # ista | mlp | none
        use_bias=True,           # LayerNorm and Dense biases (MSSA's U never has one)
        ista_expansion=4,        # dictionary D is d x (4 d)
        ista_steps=2,
        ista_step_size=0.1,      # eta
        ista_threshold=0.1,      # lambda
        ista_residual=False,     # True: x + ISTA(LN(x)), the CRATE-alpha form
        mlp_expansion=4,
        mlp_activation="relu",   # relu (the paper's GPT-2 baseline) | gelu | gelu_tanh (GPT-2)
        dropout_rate=0.0,
        layer_norm_epsilon=1e-5,
        dtype="float32",         # compute dtype: float32 | bfloat16
        **SIZES[size],
    ))

    config.data = ml_collections.ConfigDict(dict(
        source="stdlib",         # stdlib | text:/path/*.txt | tfds:<name>[/<config>][:<split>]
        data_dir="",             # where TFDS data sets live; "" = $CRATE_JAX_DATA_DIR or ~/.cache
        tokenizer="bpe",         # bpe (trained on the training split, vocab = model.vocab_size)
                                 # | gpt2 (tiktoken; needs its cached files offline)
                                 # | imported (a converted model's own: crate_jax.convert)
        val_fraction=0.05,       # documents held out for validation, chosen by a hash of their id
    ))

    config.train = ml_collections.ConfigDict(dict(
        grad_accum_steps=1,
        min_learning_rate_ratio=0.1,  # cosine decay ends at learning_rate * this
        weight_decay=0.1,        # on matrices and embeddings only
        b1=0.9,
        b2=0.95,
        grad_clip=1.0,
        keep_checkpoints=3,
        progress_bar=True,
        **TRAINING["tiny" if size == "tiny" else "paper"],
    ))

    # How the devices of every process are laid out (crate_jax/train/sharding.py): batches are
    # split over both axes; parameters and optimizer state over `fsdp` (FSDP/ZeRO-3), replicated
    # over `data`. -1 takes the devices the other axis leaves; data * fsdp = all devices.
    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))

    config.interp = ml_collections.ConfigDict(dict(
        sites="",                # comma-separated subset of ista,mlp,attn,resid; "" = all it has
        seq_len=128,             # held-out validation sequences the model reads
        batch_size=16,
        window=64,               # tokens per record, centred on the token of interest
        top_k=20,                # top records per neuron: even ranks explain, odd are held out
        random_k=20,             # uniformly random records (same halves)
        protocol="default",      # which records explain and score (interp/explanations/
                                 # splits.py): default (all the above) | paper (Bai & Ma's:
                                 # top[0:10], random[0:10])
        quantile_bins=5,         # Anthropic-style bins of the per-sequence max activation
        per_bin=4,
        eps=1e-3,                # |a| <= eps counts as zero in the near-zero sparsity columns
        explainer="token_lookup",  # the headline scores' explainer: token_lookup | ngram
                                 # (offline, deterministic) | llm | truth (planted corpus's
                                 # control: names the neuron's best planted feature)
        compared_explainers="",  # comma-separated further explainers, each scored the same way
                                 # (interp/explainers/<name>/) and checked against the truth
        lookup_tokens=10,        # tokens listed by a token_lookup explanation
        ngram_patterns=10,       # patterns in an ngram explanation
        ngram_context=8,         # preceding tokens an ngram pattern may name
        random_baseline=True,    # also score each neuron with another neuron's explanation
        token_table_entries=2**20,  # token reference: per-token sums kept per site and layer
                                 # (token ids x sampled neurons, 8 bytes each while streaming;
                                 # the rarer ids share a row)
        workers=1,               # neurons explained/simulated concurrently (llm backend)
        retry_failed=True,       # a rerun redoes neurons whose explanation or simulation failed
        bootstrap_samples=1000,
        seed=0,
        llm=ml_collections.ConfigDict(dict(
            base_url="http://127.0.0.1:8080/v1",  # any OpenAI-compatible server
            model="",
            api_key_env="OPENAI_API_KEY",         # read from the environment, never stored
            timeout_s=60.0,
            max_retries=3,
            max_concurrency=4,
            simulator_mode="auto",                # auto | logprobs | json
        )),
        **INTERPRETABILITY["tiny" if size == "tiny" else "paper"],
    ))

    # Sparse autoencoders on the trained model's activations (the `sae` stage, crate_jax/sae/),
    # one per layer of each site, trained on activations streamed from the training text.
    config.sae = ml_collections.ConfigDict(dict(
        # Comma-separated SAEs: a neuron site (ista, mlp, attn, resid), or NAME=SITE for a
        # second SAE on a site; each SAE's latents are the neuron site sae_<name>. "" = none.
        sites="",
        per_site={},             # {name: {kind, expansion, k, l1_coefficient, aux_k}} of one SAE
        kind="topk",             # topk (Gao et al. 2024) | batchtopk | relu_l1 (the paper's)
        expansion=4,             # latents per layer = expansion x the site's width
        k=32,                    # active latents per token (batchtopk: on average)
        l1_coefficient=1e-3,     # relu_l1's penalty on the latents
        aux_k=256,               # dead latents the AuxK loss uses (topk, batchtopk; 0 = none)
        dead_after_tokens=100_000,  # a latent silent this many training tokens is dead
        num_steps=500,
        batch_size=8,            # windows per step (x seq_len tokens of activations)
        seq_len=128,
        learning_rate=1e-3,
        log_every=50,
        checkpoint_every=100,
        eval_sequences=32,       # validation windows of seq_len the evaluation reads
        seed=0,
    ))

    config.stages = "train,interp"  # comma-separated stages run by crate_jax.main, in order
    return config
