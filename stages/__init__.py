"""crisis-mm pipeline stages: prepare -> featurize -> train -> evaluate -> explain (and predict).

Process-wide settings live here, in the one module Python runs before any stage or helper
module (and so before any of them imports torch): idle OpenMP threads sleep instead of
spinning. torch reads OMP_WAIT_POLICY once, when it loads its OpenMP runtime; on a busy 2-core
machine spinning threads starved each other (an MLP step at load 10: 176 ms spinning, 7 ms
passive; featurize at load 11: 3-12 posts/s spinning, 37 passive), on an idle one it costs
little. A user's own setting wins.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
