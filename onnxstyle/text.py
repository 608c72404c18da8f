"""Text that is safe to print: strings read from files written elsewhere must not drive the reader's terminal."""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: object) -> str:
    """``text`` with every control character (ESC, CR, BEL, C1 codes, …) shown as ``\\xNN`` instead of acting.

    Tabs and newlines pass: they cannot move the cursor anywhere a table or a log line does not expect.
    """
    return _CONTROL.sub(lambda match: f"\\x{ord(match.group()):02x}", str(text))
