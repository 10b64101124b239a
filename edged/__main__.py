from __future__ import annotations

import sys

from edged.cli import main

# Guarded: `spawn` children import the parent's __main__ as __mp_main__.
if __name__ == "__main__":
    sys.exit(main())
