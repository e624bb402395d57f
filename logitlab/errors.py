"""logitlab's own error type: every user-facing failure is a ``LogitlabError``."""

from __future__ import annotations

__all__ = ["LogitlabError"]


class LogitlabError(Exception):
    """A problem the user can fix: the message names it and says how.

    The command line prints the message (no traceback unless ``--debug``) and exits non-zero.
    """

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint

    def __str__(self) -> str:
        base = super().__str__()
        return f"{base}\nHint: {self.hint}" if self.hint else base
