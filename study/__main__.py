import sys

from study._cli import main

sys.exit(main())
