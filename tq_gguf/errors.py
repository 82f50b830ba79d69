"""Errors that are the user's to fix: printed as one message, no traceback."""

from .fetch import ChecksumError, FetchError
from .patchset import AlreadyAppliedError, PatchError
from .progress import StageError
from .tools import ToolNotBuilt


class UsageError(Exception):
    """Bad arguments or input files."""


UserError = (UsageError, ChecksumError, FetchError, PatchError, AlreadyAppliedError, StageError, ToolNotBuilt,
             FileNotFoundError)
