"""`python -m mia_fast` is the `mia-fast` command."""

import sys

from .cli import main

sys.exit(main())
