"""`python -m ctflows` is the `ctflows` command."""

import sys

from ctflows.cli import main

sys.exit(main())
