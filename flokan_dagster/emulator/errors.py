"""The one exception the emulator's handlers raise to answer with an error envelope."""

from __future__ import annotations


class ApiError(Exception):
    """An error answer: ``{"success": false, "error": message}`` with ``status``.

    Example:
        >>> ApiError(404, "jobId: not found").status
        404
    """

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
