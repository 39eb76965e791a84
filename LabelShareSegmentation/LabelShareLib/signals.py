"""A small pure-Python change notification, for Lib objects that tell Qt widgets (or anyone) that something changed.

Not ``qt.Signal``: signals defined in Python classes crash PythonQt, and the Lib must run without Qt (tests on
slicer-core). Usage::

    store.changed.subscribe(widget.onModelsChanged)      # widget setup
    store.changed.notify(Path("/models/liver-v3"))      # the publisher: every subscriber is called with the path
    store.changed.unsubscribe(widget.onModelsChanged)    # widget cleanup

Subscribers run at once, on the notifying thread (in Slicer: the main thread, since the Lib is polled from a
``QTimer``). A subscriber that raises is logged and does not stop the others or the notifier: a broken widget must
not fail the work that announced the change (e.g. a training run that has just published a model version).
"""

from __future__ import annotations

import logging
from collections.abc import Callable


class Signal:
    """Subscribers are kept (strongly) until unsubscribed: pair every ``subscribe`` with an ``unsubscribe``."""

    def __init__(self, name: str = "signal"):
        self.name = name
        self._subscribers: list[Callable[..., object]] = []

    def subscribe(self, callback: Callable[..., object]) -> Callable[..., object]:
        """Call ``callback(*args, **kwargs)`` on every :meth:`notify`; subscribing twice has no further effect."""
        if callback not in self._subscribers:  # bound methods compare equal when object and function are the same
            self._subscribers.append(callback)
        return callback

    def unsubscribe(self, callback: Callable[..., object]) -> None:
        """Stop calling ``callback``; nothing happens when it was not subscribed."""
        if callback in self._subscribers:
            self._subscribers.remove(callback)

    def notify(self, *args, **kwargs) -> None:
        """Call every subscriber, in subscription order, with the arguments."""
        for callback in list(self._subscribers):  # a subscriber may unsubscribe while being called
            try:
                callback(*args, **kwargs)
            except Exception:  # logged with its traceback; the notifier goes on
                logging.exception("LabelShare: a subscriber of %s failed", self.name)

    def __len__(self) -> int:
        return len(self._subscribers)
