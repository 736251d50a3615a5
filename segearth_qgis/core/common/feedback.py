"""How long work reports progress and hears a cancel: one Feedback for the pipeline, the installer, downloads,
the command line and QGIS (whose bridge subclasses it)."""

from collections.abc import Callable


class Cancelled(Exception):
    """Raised between steps when the caller asked to stop."""


class Feedback:
    """What long work reports. This base reports nothing and is never cancelled; subclasses override what they show."""

    def progress(self, fraction: float) -> None:
        """``fraction`` of the work is done, 0..1."""

    def cancelled(self) -> bool:
        return False

    def info(self, text: str) -> None:
        pass

    def warn(self, text: str) -> None:
        pass

    def check_cancel(self) -> None:
        """Raise ``Cancelled`` if the caller asked to stop."""
        if self.cancelled():
            raise Cancelled()

    def part(self, start: float, span: float, info: bool = True) -> "Feedback":
        """This feedback for a sub-task that covers ``start``..``start + span`` of the whole; ``info=False`` keeps
        the sub-task's info lines out of the log (its warnings still reach it)."""
        return _Part(self, start, span, info)


NULL_FEEDBACK = Feedback()


class _Part(Feedback):
    def __init__(self, parent: Feedback, start: float, span: float, info: bool) -> None:
        self.parent, self.start, self.span, self.relays_info = parent, start, span, info

    def progress(self, fraction: float) -> None:
        self.parent.progress(self.start + self.span * min(max(fraction, 0.0), 1.0))

    def cancelled(self) -> bool:
        return self.parent.cancelled()

    def info(self, text: str) -> None:
        if self.relays_info:
            self.parent.info(text)

    def warn(self, text: str) -> None:
        self.parent.warn(text)


class CallbackFeedback(Feedback):
    """Feedback made of plain callables, for callers that have no Feedback object: ``progress(fraction)``,
    ``cancelled()`` and ``log(text)`` (info and warnings alike), each optional."""

    def __init__(self, progress: Callable[[float], None] | None = None, cancelled: Callable[[], bool] | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        self._progress, self._cancelled, self._log = progress, cancelled, log

    def progress(self, fraction: float) -> None:
        if self._progress is not None:
            self._progress(fraction)

    def cancelled(self) -> bool:
        return bool(self._cancelled()) if self._cancelled is not None else False

    def info(self, text: str) -> None:
        if self._log is not None:
            self._log(text)

    def warn(self, text: str) -> None:
        if self._log is not None:
            self._log(f"warning: {text}")


def as_feedback(feedback: Feedback | None) -> Feedback:
    """``feedback``, or the null feedback when there is none."""
    return NULL_FEEDBACK if feedback is None else feedback
