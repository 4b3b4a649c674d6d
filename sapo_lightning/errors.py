"""The one exception type for bad user input."""


class ConfigError(ValueError):
    """A configuration value is out of its allowed range.

    The message names the option and the allowed range; the CLI prints it as one line and
    exits with status 2, before anything is written to disk.
    """
