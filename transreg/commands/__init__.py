"""Subcommands of the ``transreg`` command line, one module each."""
