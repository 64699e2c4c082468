"""`RunError`: a command cannot do what was asked (a run directory in use or holding a run,
a stale index, a missing checkpoint, a setting that does not fit the data). The command line
prints its message as one line and exits with status 2."""


class RunError(Exception):
    """See the module docstring."""
