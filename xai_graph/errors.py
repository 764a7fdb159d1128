"""The one exception type the library raises for problems a user can fix."""


class XaiGraphError(Exception):
    """A user-facing error whose message is one line that says what to do.

    The CLI prints the message as is and exits non-zero; anything else that
    escapes is a bug in xai-graph.
    """
