"""The bundled SmolLM2-135M-Instruct, served by llama-cpp-python's OpenAI-compatible server in a child process,
and reached through the same OpenAI adapter as any other server.

One server per process is shared by every `local` LLM object (`shared_server()`), started on first use and
stopped when the last user closes, at exit, or (Linux) when the process that started it dies.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from autointerp.bundled import smollm2_gguf_path
from autointerp.errors import AutointerpError
from autointerp.llm.base import LLMResponse
from autointerp.llm.openai_client import OpenAICompatibleLLM

LOCAL_MODEL_ALIAS = "smollm2"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _parent_death_signal():
    """A pre-exec hook asking Linux to SIGTERM the child when the thread that started it ends (None elsewhere).

    Resolved here in the parent, so that the forked child only calls one C function before exec.
    """
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, int(signal.SIGTERM))  # 1 = PR_SET_PDEATHSIG


class LocalServer:
    """`python -m llama_cpp.server` on 127.0.0.1 and a free port, ready when /v1/models answers (~1-2 s).

    Use as a context manager, or start()/stop(). start() returns the base URL (http://127.0.0.1:PORT/v1).
    Keep llama.cpp's default logits_all=true: with false, every logprobs request fails with HTTP 500.
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        n_ctx: int = 2048,
        host: str = "127.0.0.1",
        port: int | None = None,
        n_threads: int | None = None,
        startup_timeout_s: float = 120.0,
    ):
        self.model_path = Path(model_path) if model_path else None
        self.n_ctx = n_ctx
        self.host = host
        self.port = port
        self.n_threads = n_threads
        self.startup_timeout_s = startup_timeout_s
        self.process: subprocess.Popen | None = None
        self._log_path: Path | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def _command(self, model_path: Path) -> list[str]:
        command = [
            sys.executable, "-m", "llama_cpp.server", "--model", str(model_path), "--host", self.host,
            "--port", str(self.port), "--n_ctx", str(self.n_ctx), "--model_alias", LOCAL_MODEL_ALIAS,
        ]
        if self.n_threads:
            command += ["--n_threads", str(self.n_threads)]
        return command

    def start(self) -> str:
        if self.process is not None:
            return self.base_url
        if importlib.util.find_spec("llama_cpp") is None:
            raise AutointerpError(
                "the local model needs llama-cpp-python's server: run `make install` or "
                "`pip install 'llama-cpp-python[server]==0.3.36'`"
            )
        model_path = self.model_path or smollm2_gguf_path()
        self.port = self.port or free_port(self.host)
        fd, log_name = tempfile.mkstemp(prefix="autointerp-llama-server-", suffix=".log")
        self._log_path = Path(log_name)
        with os.fdopen(fd, "wb") as log_file:
            self.process = subprocess.Popen(
                self._command(model_path),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                preexec_fn=_parent_death_signal(),
            )
        _RUNNING.add(self)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self.base_url

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AutointerpError(
                    f"the local model server exited with code {self.process.returncode} while starting:\n{self.log_tail()}"
                )
            try:
                if httpx.get(f"{self.base_url}/models", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AutointerpError(
            f"the local model server did not answer on {self.base_url} within {self.startup_timeout_s:g} s:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 20) -> str:
        if self._log_path is None or not self._log_path.exists():
            return ""
        return "\n".join(self._log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        process, self.process = self.process, None
        _RUNNING.discard(self)
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._log_path is not None:
            self._log_path.unlink(missing_ok=True)
            self._log_path = None

    def __enter__(self) -> LocalServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


_RUNNING: set[LocalServer] = set()
_shared: LocalServer | None = None
_shared_users = 0
_shared_lock = threading.Lock()


@atexit.register
def _stop_all() -> None:
    for server in list(_RUNNING):
        server.stop()


def acquire_shared_server() -> str:
    """Start the process-wide local server if needed and count one more user; returns its base URL."""
    global _shared, _shared_users
    with _shared_lock:
        if _shared is None or _shared.process is None or _shared.process.poll() is not None:
            _shared = LocalServer()
            _shared.start()
        _shared_users += 1
        return _shared.base_url


def release_shared_server() -> None:
    """One user fewer; the last one stops the server."""
    global _shared, _shared_users
    with _shared_lock:
        _shared_users = max(0, _shared_users - 1)
        if _shared_users == 0 and _shared is not None:
            _shared.stop()
            _shared = None


# llama-cpp-python 0.3.36 pairs each echoed prompt token with the logits of its own position (those that
# predict the NEXT token) unless the prompt starts with the model's BOS token, which it then strips
# (abetlen/llama-cpp-python#1983). The bundled SmolLM2 GGUF declares BOS = <|im_start|> with add_bos = false,
# so echo prompts are sent starting with it (ChatML prompts already do).
BUNDLED_BOS = "<|im_start|>"


class LocalLLM(OpenAICompatibleLLM):
    """`local`: the bundled model. Starts the shared server on first use unless given the base_url of a running one."""

    provider = "local"
    key_env = None
    supports_grammar = True
    default_base_url = ""
    lean_http = True  # a llama.cpp server on 127.0.0.1

    def __init__(self, *, base_url: str | None = None, **kwargs):
        self._owns_server = base_url is None
        self._holds_server = False
        super().__init__(LOCAL_MODEL_ALIAS, base_url=base_url, api_key="no-key-needed", **kwargs)

    def _endpoint_host(self) -> str:
        return f"bundled:{LOCAL_MODEL_ALIAS}"  # the port changes from run to run; the model does not

    def _where(self) -> str:
        return self.base_url or "the local model server"

    def _before_connect(self) -> None:
        if self._owns_server and not self._holds_server:
            self.base_url = acquire_shared_server()
            self._holds_server = True

    async def complete(self, prompt: str, *, echo: bool = False, **kwargs) -> LLMResponse:
        """With echo, a prompt not starting with BOS gets it prepended (then removed from the text) so that the
        prompt logprobs line up; the model then reads plain text as if after a chat-turn opener."""
        if echo and not prompt.startswith(BUNDLED_BOS):
            response = await super().complete(BUNDLED_BOS + prompt, echo=True, **kwargs)
            response.text = response.text.removeprefix(BUNDLED_BOS)
            return response
        return await super().complete(prompt, echo=echo, **kwargs)

    async def aclose(self) -> None:
        await super().aclose()
        if self._holds_server:
            self._holds_server = False
            self.base_url = None
            release_shared_server()
