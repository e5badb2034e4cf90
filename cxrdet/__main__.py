"""`python -m cxrdet ...` is the same as the `cxrdet` console script."""

import sys

from cxrdet.cli import main

if __name__ == "__main__":
    sys.exit(main())
