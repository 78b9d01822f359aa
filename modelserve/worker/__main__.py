import sys

from modelserve.worker.main import main

sys.exit(main())
