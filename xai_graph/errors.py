"""The one exception type the library raises for problems a user can fix, and how it names options.

A message that tells the user what to pass names the option with `option_text(name, value)`. The library's
own text shows it as a keyword argument (`target_layer='NAME'`), the command line as its flag
(`--target-layer NAME`): the graph code never needs to know which of the two is reading.
"""

from __future__ import annotations

import re
from collections.abc import Callable

_MARK, _VALUE = "\x1f", "\x1e"  # ASCII unit / record separators: never part of a model's names
_OPTION = re.compile(f"{_MARK}(\\w+)(?:{_VALUE}([^{_MARK}]*))?{_MARK}")


def option_text(name: str, value: str | None = None) -> str:
    """An option named in an error message: its keyword `name` (as `insert` takes it), and the value to
    show where it takes one (None: a switch): a placeholder in capitals (`NAME`), a choice (`logits`), or
    what the user gave, already quoted (`repr(name)`)."""
    return f"{_MARK}{name}{_VALUE}{value}{_MARK}" if value is not None else f"{_MARK}{name}{_MARK}"


def as_keyword(name: str, value: str | None) -> str:
    """How the library's own messages show an option: as the keyword argument of `insert`."""
    if value is None:
        return f"{name}=True"
    return f"{name}={value!r}" if value.isidentifier() and not value.isupper() else f"{name}={value}"


class XaiGraphError(Exception):
    """A user-facing error whose message is one line that says what to do.

    The CLI prints the message (options worded as its flags) and exits non-zero; anything else that
    escapes is a bug in xai-graph.
    """

    def __str__(self) -> str:
        return self.worded(as_keyword)

    def worded(self, name_option: Callable[[str, str | None], str]) -> str:
        """The message with each option written by `name_option(name, value)`."""
        return _OPTION.sub(lambda m: name_option(m.group(1), m.group(2)), super().__str__())
