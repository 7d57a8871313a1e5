import sys

from raykube.cli import main

sys.exit(main())
