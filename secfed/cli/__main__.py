"""``python -m secfed.cli``: what the simulation harness starts its server and client processes with."""

import sys

from secfed.cli.main import main

sys.exit(main())
