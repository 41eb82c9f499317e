"""`python -m entrypoints.cli`: the `notifier` command."""
import sys

from entrypoints.cli import main

sys.exit(main())
