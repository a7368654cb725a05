import sys

from router.tenancy.cli import main

sys.exit(main())
