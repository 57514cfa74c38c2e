"""The one exception type for problems with the user's input.

Anything raised as `UserError` reaches the user as a single line on stderr and
exit code 2 (see `rvos_edge.cli`); everything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input (a file, a flag, an expression): the message is one line saying what and why."""
