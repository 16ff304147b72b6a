"""A readers-writer lock: searches share an index, an update holds it alone while it changes it."""

from __future__ import annotations

import threading


class ReadWriteLock:
    """Searches share the index; an add or remove waits for them and holds it alone (faiss is not safe
    for a search during an add)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False

    def read(self):
        return _Held(self, write=False)

    def write(self):
        return _Held(self, write=True)


class _Held:
    def __init__(self, lock: ReadWriteLock, write: bool) -> None:
        self.lock, self.write = lock, write

    def __enter__(self):
        cond = self.lock._cond
        with cond:
            if self.write:
                cond.wait_for(lambda: not self.lock._writing and self.lock._readers == 0)
                self.lock._writing = True
            else:
                cond.wait_for(lambda: not self.lock._writing)
                self.lock._readers += 1

    def __exit__(self, *exc):
        cond = self.lock._cond
        with cond:
            if self.write:
                self.lock._writing = False
            else:
                self.lock._readers -= 1
            cond.notify_all()
