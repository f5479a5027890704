"""Short reason texts, like squeue's: clipped, pluralised, host lists summarised. Pure."""

from __future__ import annotations

#: Longest waiting or impossible reason; longer host lists are summarised.
REASON_LIMIT = 199


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def summary(prefix: str, detail: list[str], short: list[str]) -> str:
    """``prefix`` and per-host texts, shortened step by step to stay within REASON_LIMIT."""
    for texts in (detail, short):
        if len(text := prefix + "; ".join(texts)) <= REASON_LIMIT:
            return text
    shown: list[str] = []
    for part in short:
        rest = len(short) - len(shown) - 1
        if len(prefix + "; ".join([*shown, part]) + f"; +{rest} more hosts") > REASON_LIMIT:
            break
        shown.append(part)
    more = f"+{len(short) - len(shown)} more hosts"
    return clip(prefix + "; ".join([*shown, more]), REASON_LIMIT)
