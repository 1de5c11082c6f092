"""`python -m daemon` is the `albumsync` command."""

import sys

from daemon.cli import main

sys.exit(main())
