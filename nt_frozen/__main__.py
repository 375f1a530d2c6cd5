"""`python -m nt_frozen validate ...`: same as the `nt-frozen` console script."""

import sys

from nt_frozen.validation.cli import main

if __name__ == "__main__":
    sys.exit(main())
