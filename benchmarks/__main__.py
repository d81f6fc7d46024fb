"""``python -m benchmarks``: the same command line as ``zmqrpc bench``."""

import sys

from benchmarks.bench import main

sys.exit(main())
