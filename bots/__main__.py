"""`python -m bots` is the `bots` command."""

from bots.cli import main

main()
