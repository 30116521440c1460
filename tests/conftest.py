"""Make `specs` and the repository root importable for every test directory."""

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
for path in (TESTS, TESTS.parent):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

# pytest keeps each test module's assertion-rewritten code in __pycache__ (a hash-checked .pyc,
# written atomically, so xdist workers may share it), but only where bytecode may be written:
# under PYTHONDONTWRITEBYTECODE (set on the CI machine's kind) every test process rewrote every
# test module from source again, ~0.2 CPU-s per process (ast parse, rewrite, compile of 27 spec
# modules), five processes per spec run. The test processes write bytecode under the
# repository's git-ignored __pycache__ directories, as `make setup` does for fleet/ and deploys/.
sys.dont_write_bytecode = False
