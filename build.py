#!/usr/bin/env python3
"""One entry point for people and CI: set-up, tests, lint, the demo, packaging, and commands run in the project's
environment. The work is in tools/build/ (standard library only, so any python3 can start it)."""

import sys

from tools.build.main import main

if __name__ == "__main__":
    sys.exit(main())
