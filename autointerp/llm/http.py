"""A lean HTTP/1.1 client for JSON POSTs to OpenAI-compatible servers: keep-alive connections on asyncio
streams, one request per call, and nothing else (no proxies, redirects, cookies or HTTP/2).

Why: at hundreds of requests a second the OpenAI SDK over httpx costs milliseconds of client CPU per call
(request models, header validation, a connection pool that scans its connections), more than the rest of a
feature's labeling work; this costs a fraction of that (see `autointerp.bench.pipeline_throughput`). The
OpenAI adapter uses it for compatible servers (vLLM, llama.cpp, Ollama...) and keeps the SDK for
api.openai.com and wherever a proxy is configured. Bodies are the same JSON the SDK sends and receives.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from urllib.parse import urlsplit

from autointerp.llm.errors import SendError, json_object

MAX_IDLE = 512  # keep-alive connections kept for reuse


class JsonHttpClient:
    """POST JSON to `base_url` + path; one instance per event loop (streams cannot cross loops)."""

    def __init__(self, base_url: str, headers: dict[str, str], timeout_s: float):
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.prefix = parts.path.rstrip("/")
        self.timeout_s = timeout_s
        self._ssl = ssl.create_default_context() if parts.scheme == "https" else None
        default_port = self.port == (443 if self._ssl else 80)
        host = self.host if default_port else f"{self.host}:{self.port}"
        fixed = {"Host": host, **headers, "Content-Type": "application/json", "Accept": "application/json"}
        self._head = "".join(f"{name}: {value}\r\n" for name, value in fixed.items())
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def post_json(self, path: str, body: dict) -> dict:
        """The answer's JSON object; SendError (kind as in `autointerp.llm.errors`) for anything else. A body
        that carries its JSON text (`text`, as `autointerp.llm.ledger.EncodedRequest` does) is sent as it is."""
        payload = (body.text if hasattr(body, "text") else json.dumps(body)).encode()
        request = f"POST {self.prefix}{path} HTTP/1.1\r\n{self._head}Content-Length: {len(payload)}\r\n\r\n".encode() + payload
        try:
            async with asyncio.timeout(self.timeout_s):
                status, headers, content = await self._exchange(request)
        except TimeoutError:
            raise SendError("timeout") from None
        if not 200 <= status < 300:
            raise SendError.from_status(status, headers, _error_message(content))
        return json_object(content)

    async def _exchange(self, request: bytes) -> tuple[int, dict[str, str], bytes]:
        """Send on an idle connection (once more on a new one if the server had closed it) or a new one."""
        while True:
            reused = bool(self._idle)
            reader, writer = self._idle.pop() if reused else await self._connect()
            try:
                writer.write(request)
                status, headers, content, keep = await _read_response(reader)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ssl.SSLError, ValueError) as exc:
                writer.close()
                if reused and isinstance(exc, asyncio.IncompleteReadError) and not exc.partial:
                    continue  # a kept-alive connection the server had closed: nothing was answered, ask again
                raise SendError("dropped", detail=f"{type(exc).__name__}: {exc}") from None
            except BaseException:  # timeout, cancellation, a garbled answer: the connection's state is unknown
                writer.close()
                raise
            if keep and len(self._idle) < MAX_IDLE:
                self._idle.append((reader, writer))
            else:
                writer.close()
            return status, headers, content

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            reader, writer = await asyncio.open_connection(
                self.host, self.port, ssl=self._ssl, server_hostname=self.host if self._ssl else None
            )
        except (ConnectionRefusedError, socket.gaierror) as exc:
            raise SendError("connection", detail=str(exc) or type(exc).__name__) from None
        except OSError as exc:  # unreachable network, reset during the handshake
            raise SendError("dropped", detail=f"{type(exc).__name__}: {exc}") from None
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return reader, writer

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for _, writer in idle:
            writer.close()
        for _, writer in idle:
            try:
                await writer.wait_closed()
            except (ConnectionError, ssl.SSLError):
                pass


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes, bool]:
    """(status, lower-cased headers, body, whether the connection may be reused)."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    version, status_text = head[0].split(" ", 2)[:2]
    status = int(status_text)
    headers: dict[str, str] = {}
    for line in head[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    keep = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
    if "chunked" in headers.get("transfer-encoding", "").lower():
        content = await _read_chunked(reader)
    elif "content-length" in headers:
        content = await reader.readexactly(int(headers["content-length"]))
    elif status in (204, 304):
        content = b""
    else:  # delimited by the end of the connection
        content, keep = await reader.read(), False
    return status, headers, content, keep


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                pass
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


def _error_message(content: bytes) -> str:
    """What an error answer says: the OpenAI-style error.message when there is one, else the text."""
    text = content[:2000].decode("utf-8", errors="replace")
    try:
        body = json.loads(content)
    except ValueError:
        return text
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])
    return str(error) if error else text
