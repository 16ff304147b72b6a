"""Running a stage without waiting for answers: the requests it would send are collected for a provider batch.

A batch driver sets `llm.deferral = Deferral()` on its ProviderLLMs. A request the ledger can answer is answered as
usual; any other request is collected (same cache key and occurrence as the streaming path would use) and
answered at once with a placeholder, so that the stage goes on and issues all its independent requests in one
pass. A request built from a placeholder (e.g. the explainer's retry after an unparsable answer) depends on an
answer not yet known: it is not collected but waits for a later pass. Whatever a pass computes from a
placeholder is thrown away: the driver keeps a stage's result only when `deferral.used(feature)` is False.
"""

from __future__ import annotations

import contextvars
import json
from dataclasses import dataclass
from typing import Any

from autointerp.llm.base import LLMResponse
from autointerp.llm.errors import LLMCallError

PLACEHOLDER = "[autointerp: answer pending in a provider batch]"

_feature: contextvars.ContextVar[int | None] = contextvars.ContextVar("deferral_feature", default=None)


@dataclass
class PendingRequest:
    llm: Any  # the ProviderLLM that would send it
    endpoint: str  # chat | complete
    request: dict[str, Any]
    cache_key: str
    occurrence: int
    stage: str | None

    @property
    def slot(self) -> tuple[str, int]:
        return self.cache_key, self.occurrence


class Deferral:
    """The requests collected in one pass, and which features used a placeholder."""

    def __init__(self, failed: dict[tuple[str, int], str] | None = None):
        self.pending: dict[tuple[str, int], PendingRequest] = {}
        self.features: dict[tuple[str, int], set[int]] = {}  # slot -> features that asked it
        self._used: set[int | None] = set()
        self.failed = failed or {}  # slots that gave up for good: asking them raises

    @staticmethod
    def for_feature(feature: int) -> None:
        """Attribute the requests of the current task (and tasks it starts) to `feature`."""
        _feature.set(feature)

    def used(self, feature: int) -> bool:
        return feature in self._used

    def defer(self, llm: Any, endpoint: str, request: dict[str, Any], key: str, occurrence: int, stage: str | None) -> LLMResponse:
        feature = _feature.get()
        message = self.failed.get((key, occurrence))
        if message is not None:
            raise LLMCallError(message, "batch")
        self._used.add(feature)
        if PLACEHOLDER not in json.dumps(request):
            pending = PendingRequest(llm, endpoint, request, key, occurrence, stage)
            self.pending.setdefault(pending.slot, pending)
            self.features.setdefault(pending.slot, set()).add(feature)
        return LLMResponse(text=PLACEHOLDER, model=llm.model)
