"""Start, stop and inspect a local TorchServe instance: an alias of `movierec-serve`."""

import sys

from movierec.torchserve.cli import main

if __name__ == "__main__":
    sys.exit(main())
