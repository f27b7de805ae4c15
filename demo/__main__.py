"""`python -m demo COMMAND ...`: the `ibllm` command line without installing the package."""

import sys

from .cli import main

sys.exit(main())
