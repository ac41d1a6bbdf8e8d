"""`python -m wattscale` is the same as the `wattscale` command."""

import sys

from wattscale.cli import main

sys.exit(main())
