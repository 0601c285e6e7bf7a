"""`python -m projections` runs the command line."""

from projections.cli import main

main()
