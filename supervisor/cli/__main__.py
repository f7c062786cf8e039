import sys

from supervisor.cli.supctl import main

sys.exit(main())
