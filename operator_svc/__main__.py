import sys

from operator_svc.cli import main

sys.exit(main())
