"""`python -m newsletter.cli`."""

from . import main

main()
