"""`python -m emif_daemon.cli`: the `emif` command without its console script."""

import sys

from emif_daemon.cli.main import main

sys.exit(main())
