"""User-facing errors: one paragraph saying what was wrong and what would be right."""

import difflib
import numbers
import textwrap
from collections.abc import Iterable


class RepinvError(Exception):
    """Bad input from the user. The CLI prints the message alone, without a traceback."""


class RunAborted(RuntimeError):
    """A process of a multi-process run stopped because another one crashed, left, hung or never joined. Its
    results are written; there is nothing to debug in this process, so the CLI prints the message alone (exit 1)."""


def paragraph(prog: str, message) -> str:
    """`<prog>: error: <message>` wrapped at 100 columns; paths, overrides and hyphenated names stay whole, so
    what the error names can be copied."""
    return textwrap.fill(str(message), width=100, initial_indent=f"{prog}: error: ", break_on_hyphens=False,
                         break_long_words=False)


def suggest(word: str, choices: Iterable[str], n: int = 5) -> str:
    """A ' Did you mean ...?' sentence for the closest choices, or an empty string."""
    close = difflib.get_close_matches(str(word), list(choices), n=n, cutoff=0.5)
    return f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def listing(items: Iterable[str], limit: int = 24) -> str:
    """A comma-separated list cut to `limit` items, saying how many were left out."""
    items = list(items)
    shown = ", ".join(str(i) for i in items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def is_whole(value) -> bool:
    """A whole number as a setting arrives from Hydra: an int (`3`), not a bool (`true`) nor a float (`3.0`, `1.5`),
    which a count, a size or a step would cut or refuse further on."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value) -> bool:
    """A real number (an int or a float), not a bool nor a string such as `abc`."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def named_once(key: str, given: list, meant: list, what: str, hint: str = "") -> None:
    """Refuse `given` settings of which two mean the same (`meant`, one each): a target named twice would be
    optimised twice, counted twice in the loss, and its two records would share one image file."""
    twice = [str(g) for i, g in enumerate(given) if meant[i] in meant[:i]]
    if twice:
        raise RepinvError(f"{key}={given} names {what} {', '.join(twice)} more than once; name each {what} once{hint}.")


def known_names(flag: str, given: Iterable[str] | None, known: Iterable[str], what: str) -> None:
    """Refuse names in `given` that are none of `known`: a mistyped one would be left out without a word."""
    known = list(known)
    unknown = [name for name in given or () if name not in known]
    if unknown:
        raise RepinvError(f"{flag} {' '.join(given)}: {', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} not "
                          f"{what}.{suggest(unknown[0], known)} The options are: {listing(known)}.")


class SettingsError(RepinvError):
    """Bad values in named settings; `fields` lists their dotted config keys, for callers and tests."""

    def __init__(self, message: str, fields: Iterable[str]):
        super().__init__(message)
        self.fields = list(fields)
