"""The one exception type for bad user input.

Everything a user can get wrong (a config value, a missing dataset, a mask file that does not
fit the model) raises :class:`ConfigError` with a message that says what is wrong and how to fix
it. The CLI prints that message alone, without a traceback, and exits with status 2.
"""


class ConfigError(ValueError):
    """Bad input from the user; the message names the fix."""
