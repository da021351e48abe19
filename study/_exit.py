"""Exit codes that the CLI returns and the launcher reads back from its workers."""

USAGE = 2
"""Bad input or usage: one line on stderr says what to fix; running again cannot help."""
