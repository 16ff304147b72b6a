"""Failing fast when the Hugging Face hub is out of reach, instead of minutes of retries per file."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

from autointerp.errors import AutointerpError

TIMEOUT_SECONDS = 3.0


def require_hub(what: str, instead: str) -> None:
    """Raise one clear error when HF_HUB_OFFLINE is set or the hub's host does not answer."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise AutointerpError(f"{what} would come from the Hugging Face hub, but HF_HUB_OFFLINE is set. {instead}")
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((url.hostname, port), timeout=TIMEOUT_SECONDS).close()
    except OSError:
        raise AutointerpError(
            f"{what} would come from the Hugging Face hub, which cannot be reached from here (offline?). {instead}"
        ) from None
