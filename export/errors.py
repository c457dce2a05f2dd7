"""One exception type for everything a user can get wrong, so every CLI can turn it into one line."""


class UserError(Exception):
    """Bad input from the user (a path, a file, an option): shown as one line, exit status 1."""
