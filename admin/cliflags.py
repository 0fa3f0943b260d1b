"""Command-line flags the way the docker CLI (cobra/pflag) reads them, for the simulator.

Long flags: ``--name value`` or ``--name=value``; boolean ``--rm`` or ``--rm=false``. Short
flags: ``-p 80`` or ``-p80`` or ``-p=80``, and booleans combine (``-it``, ``-dit``); a value flag
may end a combination (``-ip 80``). ``--`` ends the flags. With ``interspersed=False`` (``run``,
``create``, ``exec``) the first positional argument ends the flags: the rest is the command.

An unknown flag is an error, never skipped: the simulator must not answer for a request it
did not build.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

_TRUE = {"true", "1", "t", "TRUE", "True", "T"}
_FALSE = {"false", "0", "f", "FALSE", "False", "F"}


class CommandError(ValueError):
    """The command line cannot be turned into API requests exactly (shown to the admin)."""


@dataclass(frozen=True, slots=True)
class Flag:
    long: str  # without "--"
    short: str = ""  # one letter, without "-"
    value: bool = False  # takes a value
    repeat: bool = False  # may be given several times (values collected in a list)

    @property
    def dest(self) -> str:
        return self.long.replace("-", "_")


def flags(spec: str) -> tuple[Flag, ...]:
    """Compact flag table: ``"name= -e,env=* rm -i,interactive"`` — ``=`` takes a value, ``=*``
    repeats, a leading ``-x,`` gives the short form."""
    out = []
    for word in spec.split():
        short, item = (word[1], word[3:]) if word.startswith("-") else ("", word)
        repeat = item.endswith("=*")
        value = repeat or item.endswith("=")
        out.append(Flag(item.rstrip("=*"), short, value, repeat))
    return tuple(out)


def parse(
    args: Sequence[str], table: Sequence[Flag], command: str, interspersed: bool = True
) -> tuple[dict[str, Any], list[str]]:
    """Flags and positional arguments of ``args``; ``CommandError`` for anything unknown."""
    by_long = {f.long: f for f in table}
    by_short = {f.short: f for f in table if f.short}
    values: dict[str, Any] = {f.dest: ([] if f.repeat else None) for f in table}
    positional: list[str] = []
    index = 0

    def store(flag: Flag, value: str | None, token: str) -> None:
        if not flag.value:
            if value is None:
                values[flag.dest] = True
            elif value in _TRUE or value in _FALSE:
                values[flag.dest] = value in _TRUE
            else:
                raise CommandError(f"{token}: expected true or false, got {value!r}")
        elif flag.repeat:
            values[flag.dest].append(value)
        else:
            values[flag.dest] = value

    while index < len(args):
        token = args[index]
        index += 1
        if token == "--":  # noqa: S105 - the end-of-flags marker, not a secret
            positional.extend(args[index:])
            break
        if token.startswith("--"):
            name, eq, inline = token[2:].partition("=")
            flag = by_long.get(name)
            if flag is None:
                raise CommandError(f"docker {command}: unsupported flag --{name} (use a raw API request instead)")
            if flag.value and not eq:
                if index >= len(args):
                    raise CommandError(f"docker {command}: flag --{name} needs a value")
                inline, index = args[index], index + 1
            store(flag, inline if (eq or flag.value) else None, f"--{name}")
            continue
        if token.startswith("-") and len(token) > 1:
            letters = token[1:]
            while letters:
                letter, letters = letters[0], letters[1:]
                flag = by_short.get(letter)
                if flag is None:
                    raise CommandError(f"docker {command}: unsupported flag -{letter} (use a raw API request instead)")
                if not flag.value:
                    store(flag, None, f"-{letter}")
                    continue
                if letters:
                    value = letters[1:] if letters.startswith("=") else letters
                elif index < len(args):
                    value, index = args[index], index + 1
                else:
                    raise CommandError(f"docker {command}: flag -{letter} needs a value")
                store(flag, value, f"-{letter}")
                letters = ""
            continue
        positional.append(token)
        if not interspersed:
            positional.extend(args[index:])
            break
    return values, positional
