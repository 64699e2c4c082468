import sys

from clusterloss.app.cli.main import main

sys.exit(main())
