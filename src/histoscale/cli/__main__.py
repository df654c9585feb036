import sys

from histoscale.cli import main

sys.exit(main())
