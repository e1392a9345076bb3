import sys

from recorder_server.launcher import main

sys.exit(main())
