"""Connecting to a Ray cluster, for the drivers that spread work over one (collection, labeling).

Ray is an optional extra (`pip install autointerp[ray]`): it is imported only here, only when a Ray run is
asked for, so the in-process path never loads it. `auto` starts a private local cluster; any other address
is handed to `ray.init(address=...)` (`HOST:PORT` of a running head node, or `ray://HOST:PORT`).
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from autointerp.errors import AutointerpError

AUTO = "auto"
REACH_TIMEOUT_S = 5.0


def require_ray(setting: str = "address") -> Any:
    try:
        import ray
    except ImportError:
        raise AutointerpError(
            f"Ray is not installed: run `pip install 'autointerp[ray]'`, or run in this process (without `{setting}`)"
        ) from None
    return ray


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of `HOST:PORT` or `ray://HOST:PORT`; None for forms Ray resolves itself."""
    rest = address.removeprefix("ray://")
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]") or "127.0.0.1", int(port)


def _unreachable(address: str, why: str, setting: str) -> AutointerpError:
    return AutointerpError(
        f"cannot reach the Ray cluster at {address!r} ({why}); start one there with `ray start --head`, "
        f"give the head node's HOST:PORT as `{setting}`, or {AUTO} for a local cluster (nothing was stored)"
    )


@contextlib.contextmanager
def connected(address: str | None = AUTO, *, num_cpus: int | None = None, setting: str = "address") -> Iterator[Any]:
    """Yield the `ray` module connected to a cluster, shutting down only a connection this call opened.

    When Ray is already initialised in this process (a notebook, a test fixture), that cluster is used as is
    (an explicit address must still be reachable).
    `num_cpus` sizes a local cluster started for `auto` (default: this machine's cores). `setting` names the
    caller's setting that holds the address, in errors.
    """
    ray = require_ray(setting)
    address = address or AUTO
    if address != AUTO:
        target = _host_port(address)
        if target is not None:
            try:
                socket.create_connection(target, timeout=REACH_TIMEOUT_S).close()
            except OSError as exc:
                raise _unreachable(address, exc.strerror or type(exc).__name__, setting) from None
    if ray.is_initialized():
        yield ray
        return
    try:
        if address == AUTO:
            ray.init(
                address="local",
                num_cpus=num_cpus or os.cpu_count(),
                include_dashboard=False,
                logging_level="WARNING",
                log_to_driver=False,
                runtime_env=_package_runtime_env(),
            )
        else:
            ray.init(address=address, logging_level="WARNING", log_to_driver=False, runtime_env=_package_runtime_env())
    except (ConnectionError, TimeoutError, ValueError, RuntimeError) as exc:
        raise _unreachable(address, str(exc).splitlines()[0] if str(exc) else type(exc).__name__, setting) from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _package_runtime_env() -> dict[str, Any]:
    """Ships this very autointerp package to the workers, so they run the driver's code (a job-level setting:
    a cluster this process was already connected to runs whatever autointerp its workers have installed)."""
    return {"py_modules": [str(Path(__file__).resolve().parent)]}


@contextlib.contextmanager
def worker_errors(ray: Any, retries: int, unfinished: str, kept: str) -> Iterator[None]:
    """Around getting a Ray task's result: the task's own AutointerpError raised as is, and a worker lost for good
    (dead after `retries` restarts) made one clear error naming what it left `unfinished` and what is `kept`."""
    try:
        yield
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, AutointerpError):
            raise exc.cause from None
        if isinstance(exc.cause, ray.exceptions.OutOfMemoryError):
            raise _out_of_memory(kept) from None
        raise
    except ray.exceptions.OutOfMemoryError:
        raise _out_of_memory(kept) from None
    except ray.exceptions.RayActorError as exc:
        first_line = (str(exc).strip() or type(exc).__name__).splitlines()[0]
        raise AutointerpError(
            f"a Ray worker died and was restarted {retries} times without finishing {unfinished} ({first_line}); "
            f"{kept} is kept: rerun the same command to resume"
        ) from None


def _out_of_memory(kept: str) -> AutointerpError:
    return AutointerpError(
        f"the Ray cluster ran low on memory and killed a worker: free memory or ask for fewer workers; {kept} is "
        "kept: rerun the same command to resume"
    )
