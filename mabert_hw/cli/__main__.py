"""`python -m mabert_hw.cli`."""

import sys

from . import main

sys.exit(main())
