"""The one exception type the CLI turns into a single clear error line."""


class HazardError(Exception):
    """A user-fixable problem: bad config, missing file, unknown name, wrong schema version."""
