"""`python -m tsa ...` is the `tsa` console command."""

import sys

from tsa.cli import main

sys.exit(main())
