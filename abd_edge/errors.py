"""Exception classes raised by abd-edge.

Every error a user can trigger with bad input has its own class so that
applications can react to it precisely (``except LabelError``) instead of
parsing messages. All of them derive from :class:`AbdEdgeError`, and the
input errors also derive from :class:`ValueError` so generic handlers keep
working. This module must stay free of torch: the device runtime imports it.
"""

from __future__ import annotations


class AbdEdgeError(Exception):
    """Base class of every error raised on purpose by abd-edge."""


class ConfigError(AbdEdgeError, ValueError):
    """A configuration value is out of range or inconsistent."""


class DatasetError(AbdEdgeError, ValueError):
    """A dataset cannot be used: empty, malformed, wrong shape or dtype."""


class ImageSpecError(DatasetError):
    """Images do not match the input spec (size, channels, dtype, finiteness)."""


class LabelError(DatasetError):
    """Labels or class names are inconsistent with the data or the registry."""


class NotFittedError(AbdEdgeError, RuntimeError):
    """An operation needs a learner that has learned at least one task."""


class BundleError(AbdEdgeError):
    """A saved learner or a deployment bundle cannot be read or written."""


class BundleMissingFileError(BundleError, FileNotFoundError):
    """A file the manifest lists (or the manifest itself) is absent."""


class BundleIntegrityError(BundleError):
    """A file's size or sha256 differs from the manifest: edited or truncated."""


class BundleVersionError(BundleError):
    """The manifest declares a format version this release cannot read."""


class BundleLockedError(BundleError):
    """Another process holds the update lock of a bundle directory."""


class ExportError(AbdEdgeError):
    """An export failed its checks (ONNX checker or parity against torch)."""


class PrivacyError(AbdEdgeError):
    """Differential-privacy settings are invalid or the budget is exhausted."""


class TrainingDivergedError(AbdEdgeError, FloatingPointError):
    """Training produced a non-finite loss; nothing was changed (the call trained copies)."""


class UpdateRejectedError(AbdEdgeError):
    """A device update failed its quality gate and was not committed; the bundle is as it was.

    ``reasons`` lists each failed check; ``checks`` holds every measured value.
    """

    def __init__(self, message: str, reasons: list[str] | None = None, checks: dict | None = None) -> None:
        super().__init__(message)
        self.reasons = list(reasons or [])
        self.checks = dict(checks or {})


class MissingDependencyError(AbdEdgeError, ImportError):
    """A feature needs a package of an optional extra that is not installed (the message names the extra)."""


class BundleSignatureError(BundleError):
    """A bundle version is unsigned, signed by an untrusted key, or its signature does not match."""


class ManifestFieldError(BundleIntegrityError):
    """A manifest field is missing or has the wrong type or value; ``field`` names it, ``expected`` says what fits."""

    def __init__(self, where: str, field: str, got: object, expected: str) -> None:
        shown = "missing" if got == "missing" else f"{got!r:.80}"
        super().__init__(f"{where}: field {field!r} is {shown}, expected {expected}")
        self.where, self.field, self.got, self.expected = where, field, got, expected


class MemoryBudgetError(ConfigError):
    """A device update cannot fit ``DeviceBudget.max_memory_mb``: the process already holds too much of it.

    Raised before anything is trained or written, so the bundle is unchanged.
    """
