"""`python -m repinv` runs the same entry point as the `repinv` command."""

from repinv.cli import main

main()
