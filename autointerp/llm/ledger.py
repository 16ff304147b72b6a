"""The call ledger: every call lands in `llm_calls`, and identical requests are answered from it.

A row is durable the moment its call ends: it is appended to this process's call journal beside the store
(`autointerp.store.journal`) before the answer is handed back, so a SIGKILL costs only the calls in flight.
Inserts into `llm_calls` are batched in short `store.writing()` transactions (every `flush_rows` calls or
`flush_seconds`, and on close), so that no write connection is held for the whole job; the journal is
emptied after each. Cache reads that arrive in the same event-loop tick are fetched in one query.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import hashlib
import json
import logging
import time
import weakref
from typing import Any

from autointerp.errors import AutointerpError
from autointerp.llm.base import Usage
from autointerp.llm.prices import PriceTable
from autointerp.store.db import Store
from autointerp.store.jobs import require_run
from autointerp.store.journal import CallJournal
from autointerp.store.llm_calls import (
    LLMCall,
    answer_counts,
    insert_calls,
    spend,
    stored_answers,
)

log = logging.getLogger(__name__)

Answer = dict[str, Any]  # a stored response body

_LIVE: weakref.WeakSet[Ledger] = weakref.WeakSet()


class EncodedRequest(dict):
    """A request body with its JSON text (sorted keys) made once: the cache key, the HTTP body and the ledger
    row all use it (each made its own, ~20 us a request). Mutating it after `text` is read is a bug."""

    @functools.cached_property
    def text(self) -> str:
        return json.dumps(self, sort_keys=True)


def cache_key(provider: str, model: str, endpoint_host: str | None, endpoint: str, request: dict[str, Any]) -> str:
    """sha256 of the call's identity as JSON with sorted keys: `json.dumps({"endpoint", "host", "model",
    "provider", "request"}, sort_keys=True)`, assembled around the request's own sorted text."""
    text = request.text if isinstance(request, EncodedRequest) else json.dumps(request, sort_keys=True)
    head = json.dumps({"endpoint": endpoint, "host": endpoint_host, "model": model, "provider": provider}, sort_keys=True)
    return hashlib.sha256(f'{head[:-1]}, "request": {text}}}'.encode()).hexdigest()


class Ledger:
    """One model's view of the ledger. With store=None nothing is recorded and nothing is cached."""

    def __init__(
        self,
        store: Store | None,
        *,
        provider: str,
        model: str,
        endpoint_host: str | None,
        flush_rows: int = 256,
        flush_seconds: float = 5.0,
    ):
        if store is not None and store.read_only:
            raise AutointerpError(f"the LLM call ledger writes to {store.path}: open the store for writing, not read-only")
        self.store = store
        self.provider = provider
        self.model = model
        self.endpoint_host = endpoint_host
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self._pending: list[LLMCall] = []
        self._fresh: dict[str, list[Answer]] = {}  # answers made here and not yet flushed
        self._stored: dict[str, int] | None = None  # cache key -> answers in the file
        self._wanted: list[tuple[tuple[str, int], asyncio.Future]] = []
        self._last_flush = time.monotonic()
        self._journal: CallJournal | None = None
        _LIVE.add(self)

    def key(self, endpoint: str, request: dict[str, Any]) -> str:
        return cache_key(self.provider, self.model, self.endpoint_host, endpoint, request)

    def _stored_counts(self) -> dict[str, int]:
        if self._stored is None:
            with self.store.reading() as con:
                self._stored = answer_counts(con, self.provider, self.model)
        return self._stored

    async def answer(self, key: str, occurrence: int) -> Answer | None:
        """The `occurrence`-th earlier answer to this exact request (0-based, oldest first), or None."""
        if self.store is None:
            return None
        stored = self._stored_counts().get(key, 0)
        if occurrence < stored:
            return await self._fetch(key, occurrence)
        fresh = self._fresh.get(key, [])
        return fresh[occurrence - stored] if occurrence - stored < len(fresh) else None

    async def _fetch(self, key: str, occurrence: int) -> Answer | None:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._wanted.append(((key, occurrence), future))
        if len(self._wanted) == 1:
            loop.call_soon(self._fetch_wanted)
        return await future

    def _fetch_wanted(self) -> None:
        wanted, self._wanted = self._wanted, []
        try:
            with self.store.reading() as con:
                found = stored_answers(con, [slot for slot, _ in wanted])
        except Exception as exc:  # handed to every waiting call
            for _, future in wanted:
                if not future.done():
                    future.set_exception(exc)
            return
        for slot, future in wanted:
            if not future.done():
                future.set_result(found.get(slot))

    def record(self, call: LLMCall) -> None:
        if self.store is None:
            return
        if self._journal is None:
            self._journal = CallJournal(self.store.path)
        self._journal.append(call)
        self._pending.append(call)
        if call.error is None and not call.cached and call.response is not None:
            self._fresh.setdefault(call.cache_key, []).append(call.response)
        if len(self._pending) >= self.flush_rows or time.monotonic() - self._last_flush >= self.flush_seconds:
            try:
                self.flush()
            except AutointerpError as exc:  # e.g. another process holds the file: keep the rows, try later
                log.warning("LLM ledger flush postponed: %s", exc)

    def flush(self) -> None:
        """Write pending rows in one short transaction."""
        self._last_flush = time.monotonic()
        if self.store is None or not self._pending:
            return
        stored = self._stored_counts()
        with self.store.writing() as con:
            insert_calls(con, self._pending)
        self._pending = []
        if self._journal is not None:
            self._journal.clear()
        for key, answers in self._fresh.items():
            stored[key] = stored.get(key, 0) + len(answers)
        self._fresh = {}

    def close(self) -> None:
        """Flush, then remove this process's journal file (kept, to be folded later, if the flush fails)."""
        self.flush()
        if self._journal is not None:
            self._journal.close()
            self._journal = None


@atexit.register
def _flush_all() -> None:
    for ledger in list(_LIVE):
        try:
            ledger.close()
        except Exception as exc:  # at exit there is nobody left to raise to; the journal keeps the rows
            log.warning("LLM ledger rows left in the call journal at exit: %s", exc)


def spend_summary(store: Store, run_id: str | None = None) -> list[dict[str, Any]]:
    """Spend by run, model and stage: calls, cached, errors, billed tokens, cost_usd, priced (False: no price known)."""
    with store.reading() as con:
        rows = spend(con, run_id)
        if run_id and not rows:
            require_run(con, run_id)
        return rows


def reprice(rows: list[dict[str, Any]], prices: PriceTable) -> list[dict[str, Any]]:
    """spend_summary rows with cost_usd and priced recomputed from their billed tokens under another price table."""
    out = []
    for row in rows:
        usage = Usage(row["prompt_tokens"], row["completion_tokens"])
        cost, priced = prices.cost(row["provider"], row["model_name"], usage, batch=bool(row.get("batched")))
        out.append({**row, "cost_usd": cost, "priced": priced})
    return out
