"""Bytes -> text: UTF-8 decoding with an error that names the input, byte offset and line.

Below both readers that take bytes (:mod:`crystext.reading`, :mod:`crystext.inputs`).
"""

from __future__ import annotations

from .errors import EncodingError


def _encoding_message(data: bytes, offset: int, name: str) -> str:
    """The message for a byte that is not UTF-8: the input, the byte, its offset and its line."""
    line = data.count(b"\n", 0, offset) + 1
    return f"{name}: not UTF-8 text (byte 0x{data[offset]:02x} at offset {offset}, line {line})"


def decode_bytes(data: bytes, name: str = "input") -> str:
    """Decode UTF-8 bytes, raising :class:`EncodingError` that names the input, byte offset and line."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EncodingError(_encoding_message(data, exc.start, name)) from None


__all__ = ["decode_bytes"]
