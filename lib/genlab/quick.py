"""Quick mode: the lectures and experiments shrunk to seconds, and saying so beside every result.

``GENLAB_QUICK=1`` (the test suite sets it) makes every lecture and experiment train for a
few seconds on a little data: the code paths are all exercised, but the numbers are those of
barely trained models.  A page built that way must not pass for the real thing, so a lecture
calls :func:`mark_results` in its first cell: in quick mode, every later cell that shows
something (printed text, a figure, a displayed value) gets a badge right under its output::

    quick run (GENLAB_QUICK=1): barely trained models; the full run shows the real results

In a full run :func:`mark_results` does nothing.

>>> import os; os.environ["GENLAB_QUICK"] = "0"; is_quick()
False
"""

from __future__ import annotations

import html
import os
import sys

QUICK_ENV = "GENLAB_QUICK"
BADGE_TEXT = (f"quick run ({QUICK_ENV}=1): barely trained models on a little data; "
              f"the full run ({QUICK_ENV}=0) shows the real results")


def is_quick() -> bool:
    """True when ``GENLAB_QUICK`` is set to anything but empty or ``0``."""
    return os.environ.get(QUICK_ENV, "").strip() not in ("", "0")


class _CountingStream:
    """Stands in for ``sys.stdout``: passes everything on and notes that something was written."""

    def __init__(self, stream, on_write):
        self._stream = stream
        self._on_write = on_write

    def write(self, text):
        if text:
            self._on_write()
        return self._stream.write(text)

    def __getattr__(self, name):
        return getattr(self._stream, name)


class _ResultMarker:
    """IPython hooks: note whether a cell showed anything, and badge it afterwards."""

    def __init__(self, shell):
        self.shell = shell
        self.showed = False
        self.badging = False
        publish = shell.display_pub.publish

        def noting_publish(*args, **kwargs):  # figures and display() go through here
            if not self.badging:
                self.showed = True
            return publish(*args, **kwargs)

        shell.display_pub.publish = noting_publish
        self._wrap_stdout()

    def _wrap_stdout(self):
        if not isinstance(sys.stdout, _CountingStream):
            sys.stdout = _CountingStream(sys.stdout, self._note)

    def _note(self):
        self.showed = True

    def pre_run_cell(self, info=None):
        self._wrap_stdout()  # a cell may have replaced sys.stdout; watch the new one
        self.showed = False

    def post_run_cell(self, result=None):
        if result is not None and getattr(result, "result", None) is not None:
            self.showed = True  # the cell's last expression was displayed
        if not self.showed:
            return
        from IPython.display import display

        self.badging = True
        try:
            sys.stdout.flush()  # the badge comes after the cell's text, not in its middle
            display({"text/plain": f"[{BADGE_TEXT}]",
                     "text/html": ('<div class="genlab-quick" style="border-left: 4px solid #c0392b; '
                                   'padding: 2px 8px; color: #c0392b; font-size: 0.85em">'
                                   f"{html.escape(BADGE_TEXT)}</div>")}, raw=True)
        finally:
            self.badging = False
            self.showed = False


_MARKERS: dict[int, _ResultMarker] = {}


def mark_results(shell=None) -> bool:
    """In quick mode, badge the output of every cell run from now on; return whether quick.

    Call it once, in a notebook's first cell.  Outside IPython, or in a full run, it only
    returns :func:`is_quick`.  Calling it again in the same kernel does not add a second badge.
    """
    quick = is_quick()
    if not quick:
        return False
    if shell is None:
        try:
            from IPython import get_ipython
        except ImportError:
            return quick
        shell = get_ipython()
    if shell is None or id(shell) in _MARKERS:
        return quick
    marker = _ResultMarker(shell)
    shell.events.register("pre_run_cell", marker.pre_run_cell)
    shell.events.register("post_run_cell", marker.post_run_cell)
    _MARKERS[id(shell)] = marker
    return quick
