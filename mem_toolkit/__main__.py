"""`python -m mem_toolkit` is the `mem-toolkit` command."""
import sys

from .cli import main

sys.exit(main())
