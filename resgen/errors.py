"""The exceptions resgen raises; every one derives from `ResgenError`."""

from __future__ import annotations


class ResgenError(Exception):
    """Base of every error resgen raises on purpose."""


class VerifyError(ResgenError, ValueError):
    """A block, a value or an argument breaks a rule of the IR; the message names the op."""


class IRTypeError(VerifyError, TypeError):
    """An op received a value of the wrong kind or dtype."""


class SpecError(ResgenError, ValueError):
    """A block specification (catalog name, file:name, module:name) cannot be resolved."""


class PlanError(ResgenError, ValueError):
    """A launch configuration cannot implement the block at the requested size."""


class CompileError(ResgenError):
    """The device or host compiler rejected emitted source."""


class LaunchError(ResgenError, ValueError):
    """A kernel was called with arguments that do not match its signature."""


class BackendUnavailableError(ResgenError, RuntimeError):
    """The requested backend cannot run on this machine."""
