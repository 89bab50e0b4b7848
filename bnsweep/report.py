"""python -m bnsweep.report <sweep dir>: (re)write a sweep folder's summary, plots, TB runs."""

import sys

from bnsweep.sweep import main

if __name__ == "__main__":
    sys.exit(main())
