"""`python -m service` is the `wacht` command."""

import sys

from service.cli import main

sys.exit(main())
