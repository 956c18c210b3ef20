"""Entry point of ``python -m haproxy_acme_supervisor.lab``."""

import sys

from haproxy_acme_supervisor.lab.cli import main

sys.exit(main())
