"""Exceptions that callers (CLI, ROS node) turn into clear messages and statuses."""


class GromaError(Exception):
    """Base class of every error groma_core raises on purpose."""


class GromaInputError(GromaError, ValueError):
    """The caller gave bad input: an empty or oversized command, a malformed image, a bad box."""


class CheckpointError(GromaError):
    """A model directory is missing, incomplete, corrupt, or does not fit the architecture."""


class MissingDependencyError(GromaError, ImportError):
    """An optional, build-time-only package (e.g. matplotlib for the colour-name map) is not installed."""
