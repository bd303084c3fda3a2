"""`python -m fedlake.cli`: the same as the `fedlake` console script."""

import sys

from fedlake.cli import main

sys.exit(main())
