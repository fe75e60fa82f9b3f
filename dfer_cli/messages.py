"""The text of dfer's one-line messages: an exception reduced to one line, and names made safe
to show on a terminal.

File names may hold any byte but NUL and '/': a newline in a name would start a line that looks
like dfer's own, and an escape sequence would drive the terminal. Names shown to people go
through :func:`printable`; records keep them as they are (JSON escapes them itself).
"""
from __future__ import annotations

import unicodedata


def printable(text) -> str:
    """``text`` with every control character written as an escape (``\\n``, ``\\t``,
    ``\\x1b``, ...), so that it shows on one line and cannot move the cursor or recolour the
    terminal; other text, accents and non-Latin scripts included, is kept."""
    out = []
    for ch in str(text):
        if unicodedata.category(ch) in ("Cc", "Cf") or ch in "\u2028\u2029":
            out.append({"\n": "\\n", "\t": "\\t", "\r": "\\r"}.get(ch) or
                       (f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}"))
        else:
            out.append(ch)
    return "".join(out)


def one_line(exc: BaseException, *paths) -> str:
    """The first line of an exception's message, without a leading ``<path>: `` for any of
    `paths` (the caller names the input already; ``-`` also drops ``standard input: ``). The
    prefix is removed before the message is cut at its first line break, so a name with a
    line break in it does not cut the message short."""
    text = str(exc).strip()
    for p in paths:
        if p is None:
            continue
        for prefix in (f"{p}: ", *(("standard input: ",) if str(p) == "-" else ())):
            if text.startswith(prefix):
                text = text[len(prefix):]
                break
    lines = text.splitlines()
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) < 300 else text[:297] + "..."
