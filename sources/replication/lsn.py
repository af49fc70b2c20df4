"""PostgreSQL log sequence numbers: 64-bit integers, printed as `X/Y` hex halves like the server does."""

from __future__ import annotations


def format_lsn(lsn: int | None) -> str | None:
    if lsn is None:
        return None
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str | None) -> int | None:
    if text is None:
        return None
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)
