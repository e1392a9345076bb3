import sys

from recorder_server.cli import main

sys.exit(main())
