"""`python -m medsamkit` runs the CLI."""

from medsamkit.cli import main

main()
