"""Exit codes that the CLI returns and the launcher reads back from its workers."""

USAGE = 2
"""Bad input or usage: one line on stderr says what to fix; running again cannot help."""

UNAVAILABLE = 75
"""The study database did not answer (``EX_TEMPFAIL`` of sysexits.h): nothing was lost, and the
same command run again once the server is back goes on where this one stopped."""
