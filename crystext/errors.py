"""crystext's exception types, one per kind of problem, all under :class:`CrystextError`."""

from __future__ import annotations


class CrystextError(Exception):
    """Base class of every error crystext raises on purpose."""


class CIFParseError(CrystextError, ValueError):
    """A CIF or crystal text could not be parsed."""


class EncodingError(CrystextError, ValueError):
    """Input bytes are not valid UTF-8."""


class DisorderError(CrystextError, ValueError):
    """A structure has partially occupied (disordered) sites."""


class UnknownElementError(CrystextError, ValueError):
    """A species symbol is not a chemical element."""


class EmptyStructureError(CrystextError, ValueError):
    """A structure or cell holds no atoms (or has zero volume)."""


class SpaceGroupError(CrystextError, ValueError):
    """A space-group symbol or number is not recognised."""


class TokenizerError(CrystextError, ValueError):
    """Text cannot be tokenized faithfully (unknown tokens) or a tokenizer is malformed."""


class ConfigError(CrystextError, ValueError):
    """A preset, config file or argument is invalid."""


class DataNotFoundError(CrystextError, FileNotFoundError):
    """A data folder or file that a command needs is absent."""


class StructureTooLargeError(CrystextError, ValueError):
    """A structure has more atoms than the configured limit (``max_atoms``)."""


class RecordTimeoutError(CrystextError, TimeoutError):
    """Work on one record (text conversion, disorder ordering) ran past its time limit."""


class DocumentTooLongError(TokenizerError):
    """A tokenised document is longer than the model's context; it is never cut silently."""
