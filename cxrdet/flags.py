"""Flags shared by the command modules: one spelling and one meaning in every subcommand.

The vocabulary itself (flag | meaning | commands | default) is the table in docs/CONTRIBUTING.md.
Here live the pieces several parsers reuse: the one ``--seed`` default, the ``--device`` flag
and :class:`RenamedFlag`, which turns an old spelling users may still have in scripts into a
usage error (exit 2) that names the new flag, instead of a silent change of meaning.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from cxrdet.device import DEVICE_FORMS, parse_device
from cxrdet.errors import UserError

DEFAULT_SEED = 0  # one default for every --seed, so "same command, same result" needs no seed flag


class RenamedFlag(argparse.Action):
    """``--old VALUE`` fails at parse time with ``hint(VALUE)``, a message naming the new flag.

    Hidden from ``--help`` (the new flag is listed there) and never sets an attribute.
    """

    def __init__(self, option_strings, dest, hint: Callable[[str], str], **kwargs) -> None:
        kwargs.setdefault("help", argparse.SUPPRESS)
        kwargs.setdefault("metavar", "VALUE")
        super().__init__(option_strings, dest, default=argparse.SUPPRESS, **kwargs)
        self.hint = hint

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        value = " ".join(values) if isinstance(values, list) else str(values)
        parser.error(f"{option_string} {value}: {self.hint(value)}")


def device_arg(text: str) -> str:
    """argparse ``type`` of ``--device``: the normalised device string, or a usage error."""
    try:
        parse_device(text)
    except UserError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return str(text).strip().lower()


def add_device_flag(p: argparse.ArgumentParser, what: str) -> None:
    """``--device cpu|cuda|cuda:N|auto`` (default auto), with ``what`` saying what runs there."""
    p.add_argument("--device", type=device_arg, default="auto", metavar="DEVICE",
                   help=f"where {what}: {DEVICE_FORMS}; auto = GPU 0 when torch sees one, else cpu "
                        "(default: auto)")
