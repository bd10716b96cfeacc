"""`python -m service` is the `wacht` command."""

import sys

from wacht.service.cli import main

sys.exit(main())
