import sys

from repinv.claims.cli import main

sys.exit(main())
