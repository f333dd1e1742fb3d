"""`python -m dsp_svc`: the `uid2-dsp` console script, stop signals and all (a
container's command may well be this rather than the script)."""

import sys

from dsp_svc import console

sys.argv[0] = "uid2-dsp"  # not "__main__.py" in what it prints
sys.exit(console())
