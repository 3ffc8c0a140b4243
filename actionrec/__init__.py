"""actionrec: human action recognition in video with a from-scratch 3D CNN (Ji et al., TPAMI 2013).

The network runs on numpy (CPU) or CuPy (GPU) through one code path; see ``actionrec.backend``.
"""

__version__ = "0.1.0"

from actionrec.errors import ActionrecError  # noqa: E402,F401
