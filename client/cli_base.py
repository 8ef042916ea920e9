"""What every CLI command shares: parsing whose messages name the option and the value (`--learning-rate: 'abc'
is not a number`, not argparse's `invalid _learning_rate value`), the version, and a quiet exit on a closed pipe."""

from __future__ import annotations

import argparse
import os
import re
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import NoReturn

KINDS = {"int": "a whole number", "float": "a number"}
_INVALID = re.compile(r"^argument (?P<option>[^:]+): invalid (?P<type>\w+) value: (?P<value>.*)$", re.S)


def clear_message(message: str) -> str:
    """argparse's message with the option first and the value's problem in words."""
    invalid = _INVALID.match(message)
    if invalid is not None:
        kind = KINDS.get(invalid["type"], "a valid value")
        return f"{invalid['option']}: {invalid['value']} is not {kind}"
    return message.removeprefix("argument ")


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors read `ftjobs submit: error: --epochs: 'two' is not a whole number`."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {clear_message(message)}\n")


def learning_rate(value: str) -> float | str:
    """A float, or 'auto' (the server picks one for the method)."""
    if value == "auto":
        return value
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number (a float, or 'auto')") from None


def drop_stdout() -> None:
    """Send what stdout still holds to /dev/null: the interpreter's last flush then has nowhere to fail."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def flush_stdout() -> int:
    """Flush stdout now, where a closed pipe can still be handled quietly; 0 (an exit code to `|` with)."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        drop_stdout()
    except ValueError:  # already closed
        pass
    return 0


def package_version() -> str:
    try:
        return version("ftjobs")
    except PackageNotFoundError:  # a source tree never installed
        return "0+unknown"
