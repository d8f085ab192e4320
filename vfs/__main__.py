"""``python -m vfs`` runs the command line."""

from vfs.cli.main import main

main()
