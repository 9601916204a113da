"""The hot keys of a live session (preview window, stdin, mra-web's buttons): what each does, and
reading them from the commands queue."""
from __future__ import annotations

import queue

COMMANDS = {
    "r": "recalibrate (the face you make now counts as neutral)",
    "n": "next avatar",
    "p": "previous avatar",
    "m": "cycle modes",
    "+": "stronger expressions (mouth, eyes, brows)",
    "-": "weaker expressions",
    "o": "toggle overlay",
    "q": "quit",
}


def pending(commands: "queue.Queue[str]") -> "list[str]":
    """The keys waiting in ``commands`` (each the first letter, lower case; unknown keys dropped)."""
    keys = []
    while True:
        try:
            c = commands.get_nowait()
        except queue.Empty:
            return keys
        c = c.strip().lower()[:1]
        if c in COMMANDS:
            keys.append(c)


def next_mode(modes: "list[str]", mode: str) -> str:
    """The mode after ``mode`` in ``modes`` (hot key m), round."""
    return modes[(modes.index(mode) + 1) % len(modes)]
