"""The errors the library raises for the user to act on; the CLI turns each into one line and an
exit code (UsageError: 2, Failure: 1)."""


class UsageError(Exception):
    """Bad input from the user: exit 2."""


class Failure(Exception):
    """Something the user asked for failed (unreadable profile, ...): exit 1."""
