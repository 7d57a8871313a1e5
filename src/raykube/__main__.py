import sys

from raykube.cli import entry

sys.exit(entry())
