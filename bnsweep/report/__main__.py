"""python -m bnsweep.report <sweep folder>: (re)write a sweep folder's report."""

import sys

from bnsweep.report import main

sys.exit(main())
