"""Run the movierec command line: python -m movierec --help."""

import sys

from movierec.client.cli import main

sys.exit(main())
