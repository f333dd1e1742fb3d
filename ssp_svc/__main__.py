"""`python -m ssp_svc`: the `uid2-ssp` console script, stop signals and all (a
container's command may well be this rather than the script)."""

import sys

from ssp_svc import console

sys.argv[0] = "uid2-ssp"  # not "__main__.py" in what it prints
sys.exit(console())
