"""The one exception type for errors a user can cause and fix."""


class AutointerpError(Exception):
    """A problem the user can fix: the message says what went wrong and what to do.

    The CLI prints these without a traceback. Never put secrets (API keys) in the message.
    """


class NotFound(AutointerpError):
    """Something the user named is not in the store: a source, feature, label or run (the web answers 404)."""


class StoreBusy(AutointerpError):
    """Another process holds the store (a labeling job writing, say) for longer than the caller would wait.

    Not the user's fault and over soon: the web answers 503 with a Retry-After header, not 400."""
