"""`python -m crate_jax.convert`: Hugging Face's GPT-2 and the paper's crate-lm checkpoints in and
out, checked against `transformers` itself and against a PyTorch forward pass of the paper's
equations written here (the paper's own code stays outside the repository: its parity is
`benchmarks/conversion.py --paper_repo`)."""

import contextlib
import dataclasses
import inspect
import io
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from run_helpers import REPO

from crate_jax.convert.commands import export_model, import_model
from crate_jax.convert.formats import read_model, write_model
from crate_jax.convert.tensor_files import ConversionError
from crate_jax.data.tokenizer import train_byte_level_bpe
from crate_jax.generation import generate_tokens, load_trained, steered_logits
from crate_jax.model import LanguageModel, ModelConfig

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB, WIDTH, LAYERS, HEADS, CONTEXT = 1000, 64, 2, 4, 64
SMALL = dict(vocab_size=VOCAB, max_len=CONTEXT, num_layers=LAYERS, embed_dim=WIDTH,
             num_heads=HEADS)
# Every variant of the study, and GPT-2 as Hugging Face has it (biases, tanh GELU).
VARIANTS = {
    "crate": dict(attention="mssa", sparse_block="ista"),
    "gpt2": dict(attention="mhsa", sparse_block="mlp", use_bias=False),
    "no_ista": dict(attention="mssa", sparse_block="none"),
    "standard_attention": dict(attention="mhsa", sparse_block="ista"),
    "ista_to_mlp": dict(attention="mssa", sparse_block="mlp"),
    "hf_gpt2": dict(attention="mhsa", sparse_block="mlp", mlp_activation="gelu_tanh"),
}
GPT2_SHAPED = ("gpt2", "hf_gpt2")


def _convert(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "crate_jax.convert", *arguments], cwd=REPO,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True,
                          text=True, timeout=300)


def _random_params(settings: ModelConfig, seed: int = 0) -> dict:
    """Our model's parameters with every leaf random (biases and norms too), as NumPy."""
    model = LanguageModel(settings)
    params = model.init(jax.random.key(seed), np.zeros((1, 8), np.int32))["params"]
    leaves, tree = jax.tree_util.tree_flatten(params)
    rng = np.random.default_rng(seed)
    noisy = [np.asarray(leaf) + rng.normal(0, 0.05, leaf.shape).astype(np.float32)
             for leaf in leaves]
    return jax.tree_util.tree_unflatten(tree, noisy)


def _tokenizer_texts() -> list[str]:
    return [inspect.getsource(module) for module in (json, inspect, dataclasses)]


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """A random `GPT2LMHeadModel` (every parameter random, biases included) saved as
    safetensors, with a 1000-token byte-level BPE as tokenizer.json."""
    folder = tmp_path_factory.mktemp("hf") / "gpt2"
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=CONTEXT, n_embd=WIDTH,
                                     n_layer=LAYERS, n_head=HEADS, bos_token_id=0,
                                     eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            parameter.add_(torch.randn_like(parameter) * (0.2 if "ln" in name else 0.05))
    model.save_pretrained(folder)
    tokenizer = train_byte_level_bpe(_tokenizer_texts(), VOCAB)
    tokenizer.save(folder / "tokenizer.json")
    assert (folder / "model.safetensors").is_file()
    return folder


@pytest.fixture(scope="module")
def hf_workdir(hf_folder, tmp_path_factory):
    """`hf_folder` converted by the command line, as a user does it."""
    workdir = tmp_path_factory.mktemp("converted") / "run"
    finished = _convert("--from=hf-gpt2", f"--checkpoint={hf_folder}", f"--workdir={workdir}")
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert "python -m crate_jax.main --config=configs/workdir.py:" in finished.stdout
    return workdir


def _hf_logits(folder, tokens: np.ndarray) -> np.ndarray:
    model = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(torch.from_numpy(tokens)).logits.numpy()


def test_hugging_face_gpt2_gives_transformers_logits_and_greedy_tokens(hf_folder, hf_workdir):
    trained = load_trained(hf_workdir)
    assert trained.model.config.mlp_activation == "gelu_tanh" and trained.model.config.use_bias
    assert trained.tokenizer.vocab_size == VOCAB
    tokens = np.random.default_rng(1).integers(0, VOCAB, (2, 40)).astype(np.int64)
    ours = np.asarray(steered_logits(trained.model, trained.params, tokens))
    np.testing.assert_allclose(ours, _hf_logits(hf_folder, tokens), atol=1e-4, rtol=0)

    prompt = tokens[0, :10]
    model = transformers.GPT2LMHeadModel.from_pretrained(hf_folder).eval()
    theirs = model.generate(torch.from_numpy(prompt[None]), max_new_tokens=20, do_sample=False,
                            pad_token_id=0, eos_token_id=None)[0, len(prompt):].tolist()
    greedy = generate_tokens(trained.model, trained.params, prompt.tolist(), max_new_tokens=20,
                             temperature=0.0, use_cache=True)
    assert greedy == theirs


def test_the_converted_workdir_runs_every_stage(hf_workdir, tmp_path):
    """Evaluated on text with its own tokenizer, fine-tuned (batches of our choosing) and
    explained, by the ordinary command on the workdir's own config."""
    workdir = tmp_path / "run"
    subprocess.run(["cp", "-r", str(hf_workdir), str(workdir)], check=True)
    finished = subprocess.run(
        [sys.executable, "-m", "crate_jax.main", f"--config=configs/workdir.py:{workdir}",
         f"--workdir={workdir}", "--config.stages=train,interp", "--config.train.num_steps=2",
         "--config.train.batch_size=4", "--config.train.seq_len=32",
         "--config.train.eval_batches=2", "--config.train.checkpoint_every=2",
         "--config.train.progress_bar=False", "--config.interp.num_sequences=8",
         "--config.interp.seq_len=32", "--config.interp.window=16",
         "--config.interp.neurons_per_layer=4"],
        cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True,
        timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "step 0 | validation loss" in finished.stdout  # the imported model, before training
    assert "references: unigram" in finished.stdout
    summary = json.loads((workdir / "interp" / "summary.json").read_text())
    assert summary["checkpoint_step"] == 2 and summary["neurons_scored"] > 0
    assert json.loads((workdir / "data" / "tokens.json").read_text())["tokenizer"] == "imported"


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_export_then_import_is_the_identity(variant, tmp_path):
    settings = ModelConfig(**SMALL, **VARIANTS[variant])
    params = _random_params(settings)
    formats = ("crate-lm", "hf-gpt2") if variant in GPT2_SHAPED else ("crate-lm",)
    for format_name in formats:
        path = tmp_path / format_name
        write_model(format_name, settings, params, 77, path)
        back = read_model(format_name, path)
        assert back.settings == settings
        assert jax.tree_util.tree_structure(back.params) == jax.tree_util.tree_structure(params)
        for ours, theirs in zip(jax.tree_util.tree_leaves(params),
                                jax.tree_util.tree_leaves(back.params), strict=True):
            assert theirs.dtype == np.float32 and np.array_equal(ours, theirs)
        assert back.step == (77 if format_name == "crate-lm" else 0)


@pytest.mark.parametrize("variant", GPT2_SHAPED)
def test_hugging_face_export_loads_in_transformers_with_equal_logits(variant, tmp_path):
    settings = ModelConfig(**SMALL, **VARIANTS[variant])
    params = _random_params(settings, seed=3)
    write_model("hf-gpt2", settings, params, 0, tmp_path / "hf")
    tokens = np.random.default_rng(2).integers(0, VOCAB, (2, 33))
    ours = np.asarray(steered_logits(LanguageModel(settings), params, tokens))
    np.testing.assert_allclose(ours, _hf_logits(tmp_path / "hf", tokens), atol=1e-4, rtol=0)


def test_a_pytorch_model_bin_and_bare_gpt2model_names_read_as_safetensors_do(hf_folder,
                                                                             tmp_path):
    """transformers' older weights file (a pickled state dict, tied head included) and the
    Hub's bare `GPT2Model` names (`h.0...`, no `transformer.` prefix) hold the same model."""
    reference = read_model("hf-gpt2", hf_folder)
    state = transformers.GPT2LMHeadModel.from_pretrained(hf_folder).state_dict()
    assert "lm_head.weight" in state
    for name, tensors in (("bin", state), ("bare", {
            key.removeprefix("transformer."): value for key, value in state.items()
            if key != "lm_head.weight"})):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_bytes((hf_folder / "config.json").read_bytes())
        torch.save(tensors, folder / "pytorch_model.bin")
        again = read_model("hf-gpt2", folder)
        assert again.settings == reference.settings
        for a, b in zip(jax.tree_util.tree_leaves(reference.params),
                        jax.tree_util.tree_leaves(again.params), strict=True):
            assert np.array_equal(a, b)


def test_the_command_line_exports_and_reimports_a_workdir_bit_for_bit(hf_workdir, tmp_path):
    exported, again = tmp_path / "exported", tmp_path / "again"
    finished = _convert("--to=hf-gpt2", f"--workdir={hf_workdir}", f"--checkpoint={exported}")
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= {
        path.name for path in exported.iterdir()}
    _convert_in_process("hf-gpt2", exported, again)
    first, second = load_trained(hf_workdir), load_trained(again)
    assert first.model.config == second.model.config
    for a, b in zip(jax.tree_util.tree_leaves(first.params),
                    jax.tree_util.tree_leaves(second.params), strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert (again / "data" / "tokenizer.json").read_bytes() == (
        hf_workdir / "data" / "tokenizer.json").read_bytes()

    before = (again / "conversion.json").read_bytes()
    with contextlib.redirect_stdout(io.StringIO()) as output:
        _convert_in_process("hf-gpt2", exported, again)
    assert "already holds this conversion" in output.getvalue()
    assert (again / "conversion.json").read_bytes() == before


def _convert_in_process(format_name: str, source, workdir, tokenizer=None) -> None:
    """`import_model`, the function behind `--from`, for the cases one subprocess covers."""
    import_model(format_name, source, workdir, tokenizer, None)


# --- the paper's crate-lm checkpoints -----------------------------------------------------------

def _linear(generator, out_features: int, in_features: int) -> "torch.Tensor":
    return torch.randn(out_features, in_features, generator=generator) * 0.05


def _paper_state_dict(kind: str, bias: bool, generator) -> dict:
    """A state dict in the paper's names and layouts (nn.Linear weights [out, in]), random."""
    d, vocab = WIDTH, VOCAB
    wte = torch.randn(vocab, d, generator=generator) * 0.05
    state = {"transformer.wte.weight": wte, "lm_head.weight": wte,
             "transformer.wpe.weight": torch.randn(CONTEXT, d, generator=generator) * 0.05,
             "transformer.ln_f.weight": 1 + 0.1 * torch.randn(d, generator=generator)}
    if bias:
        state["transformer.ln_f.bias"] = 0.1 * torch.randn(d, generator=generator)
    for index in range(LAYERS):
        block = f"transformer.h.{index}."
        norms = ("prenorm_1", "prenorm_2") if kind == "crate" else ("ln_1", "ln_2")
        for norm in norms:
            state[f"{block}{norm}.weight"] = 1 + 0.1 * torch.randn(d, generator=generator)
            if bias:
                state[f"{block}{norm}.bias"] = 0.1 * torch.randn(d, generator=generator)
        qkv = d if kind == "crate" else 3 * d
        state[f"{block}attn.c_attn.weight"] = _linear(generator, qkv, d)
        state[f"{block}attn.c_proj.weight"] = _linear(generator, d, d)
        if bias:
            if kind == "gpt":
                state[f"{block}attn.c_attn.bias"] = 0.1 * torch.randn(qkv, generator=generator)
            state[f"{block}attn.c_proj.bias"] = 0.1 * torch.randn(d, generator=generator)
        if kind == "crate":
            state[f"{block}ista.weight"] = _linear(generator, 4 * d, d) * 4
        else:
            state[f"{block}mlp.c_fc.weight"] = _linear(generator, 4 * d, d)
            state[f"{block}mlp.c_proj.weight"] = _linear(generator, d, 4 * d)
            if bias:
                state[f"{block}mlp.c_fc.bias"] = 0.1 * torch.randn(4 * d, generator=generator)
                state[f"{block}mlp.c_proj.bias"] = 0.1 * torch.randn(d, generator=generator)
    return state


def _paper_forward(kind: str, state: dict, tokens: "torch.Tensor") -> np.ndarray:
    """Logits of the paper's two models from their equations (not their code): pre-LN causal
    attention in a residual; CRATE: one shared projection for query, key and value, then two
    non-negative ISTA steps (eta = lambda = 0.1) and no residual; GPT: a ReLU MLP residual."""
    functional = torch.nn.functional
    d, heads = WIDTH, HEADS

    def norm(x, name):
        return functional.layer_norm(x, (d,), state[f"{name}.weight"], state.get(f"{name}.bias"),
                                     1e-5)

    def linear(x, name):
        return functional.linear(x, state[f"{name}.weight"], state.get(f"{name}.bias"))

    def split(x):
        return x.view(*x.shape[:2], heads, d // heads).transpose(1, 2)

    batch, length = tokens.shape
    x = state["transformer.wte.weight"][tokens] + state["transformer.wpe.weight"][:length]
    for index in range(LAYERS):
        block = f"transformer.h.{index}."
        first, second = ("prenorm_1", "prenorm_2") if kind == "crate" else ("ln_1", "ln_2")
        projected = linear(norm(x, block + first), block + "attn.c_attn")
        query, key, value = ((projected,) * 3 if kind == "crate"
                             else projected.split(d, dim=-1))
        heads_out = functional.scaled_dot_product_attention(split(query), split(key),
                                                            split(value), is_causal=True)
        x = x + linear(heads_out.transpose(1, 2).reshape(batch, length, d),
                       block + "attn.c_proj")
        h = norm(x, block + second)
        if kind == "crate":
            dictionary_t = state[block + "ista.weight"]  # D^T, [4d, d]
            correlation = h @ dictionary_t.T
            code = torch.relu(0.1 * correlation - 0.01)
            code = torch.relu(code + 0.1 * (correlation - code @ dictionary_t @ dictionary_t.T)
                              - 0.01)
            x = code @ dictionary_t
        else:
            x = x + linear(torch.relu(linear(h, block + "mlp.c_fc")), block + "mlp.c_proj")
    x = norm(x, "transformer.ln_f")
    return (x @ state["transformer.wte.weight"].T).numpy()


def _nanogpt_checkpoint(path, kind: str, bias: bool) -> dict:
    """What the paper's train.py saves, torch.compile's prefix and optimizer state included.
    `bias` is model_args['bias']; the paper's CRATE has its biases whatever it says."""
    state = _paper_state_dict(kind, bias or kind == "crate", torch.Generator().manual_seed(7))
    torch.save({"model": {f"_orig_mod.{name}": tensor for name, tensor in state.items()},
                "optimizer": {"state": {0: {"exp_avg": torch.zeros(3)}},
                              "param_groups": [{"lr": 6e-4, "params": [0]}]},
                "model_args": dict(n_layer=LAYERS, n_head=HEADS, n_embd=WIDTH,
                                   block_size=CONTEXT, bias=bias, vocab_size=VOCAB,
                                   dropout=0.0),
                "iter_num": 1234, "best_val_loss": torch.tensor(3.25),
                "config": {"dataset": "pile", "compile": True}}, path)
    return state


@pytest.mark.parametrize(("kind", "bias"), [("crate", False), ("gpt", False), ("gpt", True)])
def test_a_paper_checkpoint_converts_to_its_equations(kind, bias, tmp_path):
    """The paper's CRATE keeps its biases whatever model_args['bias'] says; its GPT follows it."""
    path = tmp_path / "ckpt.pt"
    state = _nanogpt_checkpoint(path, kind, bias)
    imported = read_model("crate-lm", path)
    assert imported.step == 1234
    expected = ("mssa", "ista") if kind == "crate" else ("mhsa", "mlp")
    assert (imported.settings.attention, imported.settings.sparse_block) == expected
    tokens = np.random.default_rng(4).integers(0, VOCAB, (2, 24))
    ours = np.asarray(steered_logits(LanguageModel(imported.settings), imported.params, tokens))
    theirs = _paper_forward(kind, state, torch.from_numpy(tokens))
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


def test_the_paper_crate_converts_and_exports_without_a_tokenizer(tmp_path):
    """The paper's model has GPT-2's padded vocabulary: without --tokenizer the workdir uses
    GPT-2's BPE (tiktoken)."""
    path, workdir = tmp_path / "ckpt.pt", tmp_path / "run"
    state = _paper_state_dict("crate", True, torch.Generator().manual_seed(5))
    state["transformer.wte.weight"] = torch.randn(50304, WIDTH) * 0.02
    state["lm_head.weight"] = state["transformer.wte.weight"]
    torch.save({"model": state, "model_args": dict(n_layer=LAYERS, n_head=HEADS, n_embd=WIDTH,
                                                   block_size=CONTEXT, bias=False,
                                                   vocab_size=50304),
                "iter_num": 600000}, path)
    with contextlib.redirect_stdout(io.StringIO()) as output:
        _convert_in_process("crate-lm", path, workdir)
    assert "the paper's CRATE" in output.getvalue() and "step 600000" in output.getvalue()
    config = json.loads((workdir / "config.json").read_text())
    assert config["variant"] == "crate" and config["data"]["tokenizer"] == "gpt2"
    assert config["model"]["vocab_size"] == 50304
    assert (workdir / "checkpoints" / "600000").is_dir()
    record = json.loads((workdir / "conversion.json").read_text())
    assert record["format"] == "crate-lm" and record["step"] == 600000
    assert len(record["source_sha256"]) == 64

    exported = tmp_path / "exported.pt"
    export_model("crate-lm", workdir, exported, None)
    saved = torch.load(exported, weights_only=True)
    assert saved["iter_num"] == 600000
    assert set(saved["model_args"]) == {"n_layer", "n_head", "n_embd", "block_size", "bias",
                                        "vocab_size", "dropout"}  # the paper's CRATEConfig
    assert set(saved["model"]) == set(state)
    for name, tensor in state.items():
        assert torch.equal(saved["model"][name], tensor), name


# --- bad inputs: one line each, nothing written -------------------------------------------------

def test_bad_files_are_refused_by_name_before_a_workdir_is_written(hf_folder, tmp_path):
    good = tmp_path / "good.pt"
    _nanogpt_checkpoint(good, "crate", bias=True)
    workdir = tmp_path / "run"

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ConversionError, match="cannot read .*truncated.pt as a PyTorch"):
        _convert_in_process("crate-lm", truncated, workdir)

    cut_safetensors = tmp_path / "cut" / "model.safetensors"
    cut_safetensors.parent.mkdir()
    data = (hf_folder / "model.safetensors").read_bytes()
    cut_safetensors.write_bytes(data[: len(data) // 3])
    (cut_safetensors.parent / "config.json").write_bytes((hf_folder / "config.json").read_bytes())
    with pytest.raises(ConversionError, match="cannot read .*model.safetensors as safetensors"):
        _convert_in_process("hf-gpt2", cut_safetensors.parent, workdir,
                            hf_folder / "tokenizer.json")

    def edited(name: str, change) -> object:
        checkpoint = torch.load(good, weights_only=True)
        change(checkpoint["model"])
        path = tmp_path / f"{name}.pt"
        torch.save(checkpoint, path)
        return path

    missing = edited("missing", lambda model: model.pop("_orig_mod.transformer.h.1.ista.weight"))
    with pytest.raises(ConversionError, match=r"tensor transformer\.h\.1\.ista\.weight is missing"):
        _convert_in_process("crate-lm", missing, workdir)
    wrong = edited("wrong", lambda model: model.update(
        {"_orig_mod.transformer.h.0.attn.c_proj.weight": torch.zeros(WIDTH, WIDTH + 1)}))
    with pytest.raises(ConversionError, match=r"tensor transformer\.h\.0\.attn\.c_proj\.weight "
                                              r"has shape \[64, 65\]"):
        _convert_in_process("crate-lm", wrong, workdir)
    unknown = edited("unknown", lambda model: model.update(
        {"_orig_mod.transformer.h.0.attn.rotary": torch.zeros(4)}))
    with pytest.raises(ConversionError, match=r"unknown tensor transformer\.h\.0\.attn\.rotary"):
        _convert_in_process("crate-lm", unknown, workdir)

    noise = tmp_path / "noise.bin"
    noise.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ConversionError, match="cannot read .*noise.bin as a PyTorch"):
        _convert_in_process("crate-lm", noise, workdir)
    llama = tmp_path / "llama"
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (llama / "model.safetensors").write_bytes(data)
    with pytest.raises(ConversionError, match="model_type is 'llama'"):
        _convert_in_process("hf-gpt2", llama, workdir)
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "model.safetensors").write_bytes(data)
    with pytest.raises(ConversionError, match="config.json is missing"):
        _convert_in_process("hf-gpt2", lone, workdir)
    (lone / "vocab.json").write_text("{}")
    with pytest.raises(ConversionError, match="merges.txt is missing"):
        _convert_in_process("crate-lm", good, workdir, lone / "vocab.json")
    with pytest.raises(ConversionError, match="unknown format 'onnx'"):
        _convert_in_process("onnx", good, workdir)
    assert not (workdir / "checkpoints").exists() and not (workdir / "config.json").exists()


def test_one_fatal_line_and_a_trained_run_is_never_overwritten(trained, tmp_path):
    path = tmp_path / "ckpt.pt"
    _nanogpt_checkpoint(path, "crate", bias=True)
    bytes_before = (trained / "config.json").read_bytes()
    finished = _convert("--from=crate-lm", f"--checkpoint={path}", f"--workdir={trained}")
    assert finished.returncode == 1
    lines = finished.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("FATAL: ") and "already holds a run" in lines[0]
    assert (trained / "config.json").read_bytes() == bytes_before


def test_another_model_into_a_converted_workdir_is_refused(hf_workdir, tmp_path):
    other = tmp_path / "other.pt"
    _nanogpt_checkpoint(other, "gpt", bias=True)
    with pytest.raises(ConversionError, match="holds another conversion"):
        _convert_in_process("crate-lm", other, hf_workdir, None)


def test_formats_that_cannot_hold_the_model_are_refused_before_writing(tmp_path):
    settings = ModelConfig(**SMALL, **VARIANTS["crate"])
    with pytest.raises(ConversionError, match="use --to=crate-lm"):
        write_model("hf-gpt2", settings, _random_params(settings), 0, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_the_package_needs_no_torch_outside_conversion():
    """PyTorch and safetensors are the `convert` extra: every stage imports without them, and a
    conversion without them says what to install."""
    code = ("import sys\n"
            "class Absent:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.partition('.')[0] in ('torch', 'safetensors'):\n"
            "            raise ImportError(name)\n"
            "sys.meta_path.insert(0, Absent())\n"
            "import crate_jax.main, crate_jax.study, crate_jax.generation\n"
            "import crate_jax.convert.commands\n"
            "assert 'torch' not in sys.modules\n"
            "from pathlib import Path\n"
            "from crate_jax.convert.tensor_files import ConversionError, read_torch_pickle\n"
            "try:\n"
            "    read_torch_pickle(Path('x.pt'))\n"
            "except ConversionError as error:\n"
            "    print(error)\n")
    finished = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                              text=True, timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert "pip install -e '.[convert]'" in finished.stdout
