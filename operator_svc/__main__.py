"""`python -m operator_svc`: the `uid2-operator` console script, stop signals and all (a
container's command may well be this rather than the script)."""

import sys

from operator_svc import console

sys.argv[0] = "uid2-operator"  # not "__main__.py" in what it prints
sys.exit(console())
