"""labtasker's one error tree; lower libraries' errors are translated into it at their boundary.

    DispatcherError                 root; the CLI prints its message on one line and exits
    ├── UsageError                  bad input from the user (exit 2)
    │   ├── ConfigError             hosts.toml missing, not TOML, unknown key, wrong type
    │   ├── TemplateError           a command template that cannot be rendered
    │   │   └── UnsafeTemplateError a placeholder where the shell would read its value as code
    │   ├── SweepError              bad --args / --grid / --file input
    │   └── TaskNotFoundError       an id that is not in the queue
    ├── StoreError                  the queue file cannot be used (exit 2)
    │   ├── NoQueueError            no queue where one was looked for (exit 1)
    │   ├── StoreLockedError        another process held the file past the lock timeout
    │   ├── StoreVersionError       the file was written by a newer labtasker
    │   ├── IllegalTransitionError  a state change the lifecycle forbids
    │   └── DispatcherRunningError  a second dispatcher on one queue
    ├── TransportError              a host could not be reached or used (exit 1)
    │   ├── ConnectError            refused, unresolvable, timed out
    │   ├── AuthError               the server refused every key
    │   ├── HostKeyError            unknown or changed host key
    │   └── ConnectionLostError     an established connection dropped
    └── RemoteError                 the host answered, but not as expected (exit 1)
        ├── PythonMissingError      no usable Python (>= 3.8) on the host
        └── ProtocolError           the helper said something we cannot parse
            └── ProtocolViolationError  a host's message broke the protocol's shape or limits

A task's non-zero exit is data (``Task.exit_code``), never an exception.
"""

from __future__ import annotations


class DispatcherError(Exception):
    """Root of every error labtasker raises on purpose; anything else is a bug."""

    exit_code = 1


class UsageError(DispatcherError):
    """Raised for input the user can fix: arguments, files, ids."""

    exit_code = 2


class ConfigError(UsageError):
    """Raised when hosts.toml (or another config file) is missing or invalid."""


class TemplateError(UsageError):
    """Raised when a command template has a placeholder the task's args lack, or bad syntax."""


class UnsafeTemplateError(TemplateError):
    """Raised when a placeholder sits where no quoting keeps its value from being run as code."""


class SweepError(UsageError):
    """Raised when --args, --grid or a sweep/JSONL file cannot be turned into argument groups."""


class TaskNotFoundError(UsageError):
    """Raised when a task id given by the user is not in the queue."""


class StoreError(DispatcherError):
    """Raised when the queue file cannot be opened, read or written."""

    exit_code = 2


class NoQueueError(StoreError):
    """Raised when a command that only uses a queue finds none (only adding tasks creates one)."""

    exit_code = 1


class StoreLockedError(StoreError):
    """Raised when another process kept the queue file locked past the lock timeout."""


class StoreVersionError(StoreError):
    """Raised when the queue file's schema is newer than this labtasker understands."""


class IllegalTransitionError(StoreError):
    """Raised when a task state change is not in the lifecycle's table of allowed moves."""


class DispatcherRunningError(StoreError):
    """Raised when a dispatcher is started on a queue another dispatcher already serves."""


class TransportError(DispatcherError):
    """Raised when a host cannot be reached, authenticated or kept connected."""

    def __init__(self, message: str, *, host: str | None = None) -> None:
        super().__init__(message)
        self.host = host


class ConnectError(TransportError):
    """Raised when a connection cannot be opened: refused, unresolvable, timed out."""


class AuthError(TransportError):
    """Raised when the server refused every key and method offered."""


class HostKeyError(TransportError):
    """Raised when the host's key is unknown or differs from known_hosts."""


class ConnectionLostError(TransportError):
    """Raised when an established connection drops (keepalive timeout, EOF, reset)."""


class RemoteError(DispatcherError):
    """Raised when a connected host cannot run labtasker's helper or answers badly."""

    def __init__(self, message: str, *, host: str | None = None) -> None:
        super().__init__(message)
        self.host = host


class PythonMissingError(RemoteError):
    """Raised when the host has no Python interpreter >= 3.8 under the configured name."""


class ProtocolError(RemoteError):
    """Raised when a helper message cannot be parsed or has the wrong version."""


class ProtocolViolationError(ProtocolError):
    """Raised when a host's message breaks the protocol's shape or the controller's limits."""
