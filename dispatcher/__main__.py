"""``python -m dispatcher`` runs the labtasker CLI."""

from dispatcher.cli import main

main()
