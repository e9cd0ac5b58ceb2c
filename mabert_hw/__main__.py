"""`python -m mabert_hw`, the same as the `mabert-hw` command."""

import sys

from .cli import main

sys.exit(main())
