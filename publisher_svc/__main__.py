"""`python -m publisher_svc`: the `uid2-publisher` console script, stop signals and all (a
container's command may well be this rather than the script)."""

import sys

from publisher_svc import console

sys.argv[0] = "uid2-publisher"  # not "__main__.py" in what it prints
sys.exit(console())
