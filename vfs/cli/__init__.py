"""The ``vfs`` command line: one module per command group."""
