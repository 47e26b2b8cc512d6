"""The one error type that carries an HTTP status.

Every failure a client should see with a status (bad request, not found, engine refusal,
conversion failure) is a StatusError: `message` is the text Ollama would send, `status` the code.
Each API family translates it once, into its own envelope (native, OpenAI, Anthropic).
"""

from __future__ import annotations


class StatusError(Exception):
    def __init__(self, message: str, status: int = 500):
        super().__init__(message)
        self.message = message
        self.status = status
