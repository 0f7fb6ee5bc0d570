import sys

from .shell.commands import main

sys.exit(main())
