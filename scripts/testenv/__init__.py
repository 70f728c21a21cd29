"""Real servers for tests and for the one-command local stack: each runs from
Debian's packages, on loopback ports of its own, under a temporary directory, and is
stopped by its pid (never by name)."""
