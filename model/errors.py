"""Typed errors for loading parameters: each names the problem and the file or parameter."""

from __future__ import annotations


class CheckpointError(Exception):
    """Base class: parameters that cannot be loaded into this model."""


class NotACheckpointError(CheckpointError):
    """The file is not a phoenix checkpoint: not a regular file, not safetensors (a malformed
    header, tensors that do not tile the data), or without our metadata."""


class UnreadableCheckpointError(CheckpointError):
    """The file exists but cannot be read (permissions, an I/O error)."""


class TruncatedCheckpointError(CheckpointError):
    """The file ends before its header says its data does."""


class ChecksumMismatchError(CheckpointError):
    """The tensors' bytes do not hash to the checksum recorded when the file was written."""


class IncompatibleConfigError(CheckpointError):
    """The recorded config (or format version) is one this code cannot build a model from."""


class MissingParameterError(CheckpointError):
    """A parameter the config requires is absent."""


class UnexpectedParameterError(CheckpointError):
    """A parameter the config does not know is present."""


class ParameterShapeError(CheckpointError):
    """A parameter's shape disagrees with the config."""


class ParameterDtypeError(CheckpointError):
    """A parameter is not float32."""
