"""Escaping and the number, epsilon and time formats of the audit page.

The readers are compliance officers, not differential-privacy experts, and print the page: numbers are
written as people write them (``1 × 10⁻⁵``, ``12 %``, ``3.21``), a missing value is a dash, and a missing
or infinite epsilon says in words that there is no privacy bound. A non-breaking space keeps a symbol with
its value (``ε = 3.21``, ``12 %``) across line breaks. Every function takes any JSON value (see
:mod:`secfed.audit.fields`) and returns plain text; :func:`esc` makes text safe inside HTML.
"""

from __future__ import annotations

import html
import math
from datetime import UTC, datetime
from typing import Any

from secfed.audit.fields import as_int, as_num, as_text

__all__ = [
    "EQ",
    "INFINITE_EPSILON",
    "NBSP",
    "esc",
    "fmt_eps",
    "fmt_int",
    "fmt_num",
    "fmt_pct",
    "fmt_power",
    "fmt_sci",
    "fmt_time",
    "plural",
]

INFINITE_EPSILON = "∞ (no privacy)"
NBSP = "\u00a0"
EQ = f"{NBSP}={NBSP}"  # "ε = 3.21" never breaks across lines
_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def esc(value: object) -> str:
    """HTML-escape any value (quotes too, so the result is safe inside attributes)."""
    return html.escape(str(value), quote=True)


def plural(count: int, word: str, plural_word: str | None = None) -> str:
    """``1 round``, ``2,048 rounds``."""
    return f"{count:,} {word if count == 1 else (plural_word or word + 's')}"


def fmt_power(base: int, exponent: int) -> str:
    """``10⁻⁵``, ``2⁶⁴``: a power in superscript, with no markup."""
    return f"{base}{str(exponent).translate(_SUPERSCRIPT)}"


def fmt_num(value: Any, digits: int = 3) -> str:
    """``digits`` significant digits, thousands separated, no exponent for everyday magnitudes."""
    number = as_num(value)
    if number is None:
        return "—"
    if math.isinf(number):
        return "∞" if number > 0 else "−∞"
    if number == 0:
        return "0"
    magnitude = abs(number)
    if magnitude >= 10**digits:
        return f"{number:,.0f}"
    if magnitude < 1e-3:
        return fmt_sci(number)
    return f"{number:.{digits}g}"


def fmt_sci(value: Any) -> str:
    """Scientific notation as people write it: ``1 × 10⁻⁵`` (the mantissa is dropped when it is 1)."""
    number = as_num(value)
    if number is None:
        return "—"
    if number == 0 or not math.isfinite(number):
        return fmt_num(number)
    mantissa_text, exponent_text = f"{number:.2e}".split("e")
    mantissa = mantissa_text.rstrip("0").rstrip(".")
    power = fmt_power(10, int(exponent_text))
    return power if mantissa == "1" else f"{mantissa}{NBSP}×{NBSP}{power}"


def fmt_eps(value: Any) -> str:
    """Epsilon with 3 significant digits; missing or infinite means no bound at all."""
    number = as_num(value)
    if number is None or math.isinf(number):
        return INFINITE_EPSILON
    return fmt_num(number)


def fmt_int(value: Any) -> str:
    number = as_int(value)
    return "—" if number is None else f"{number:,}"


def fmt_pct(fraction: float | None) -> str:
    """A fraction as a percentage; a tiny non-zero share reads ``< 0.1 %``, never ``0 %``."""
    if fraction is None or not math.isfinite(fraction):
        return "—"
    pct = fraction * 100
    if pct == 0:
        return f"0{NBSP}%"
    if 0 < pct < 0.1:
        return f"<{NBSP}0.1{NBSP}%"
    return f"{pct:.1f}{NBSP}%" if pct < 10 else f"{pct:.0f}{NBSP}%"


def fmt_time(value: Any) -> str:
    """An ISO timestamp in words (``5 March 2024, 08:11 UTC``); text that is not one is shown as is."""
    text = as_text(value)
    if text is None:
        return "—"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return text
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
        return moment.strftime("%-d %B %Y, %H:%M UTC")
    return moment.strftime("%-d %B %Y, %H:%M")
