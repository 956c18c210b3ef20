"""Allow ``python -m haproxy_acme_supervisor``."""

import sys

from .cli import main

sys.exit(main())
