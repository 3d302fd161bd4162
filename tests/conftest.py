import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # unit tests draw figures without a display

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))   # so tests can import tools.nbtools
