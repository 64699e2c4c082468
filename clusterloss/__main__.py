import sys

from clusterloss.cli.main import main

sys.exit(main())
