"""gfcore's benchmarks: `python -m benchmarks.<name>` from the checkout.

`python -m` puts the checkout first on sys.path, and its gfcore/ has no compiled kernels (they
are in the installed gfcore): move the checkout to the end, so that `import gfcore` finds the
installed package (the source tree stays the fallback where gfcore is not installed). This
package's own modules resolve through its __path__, whatever sys.path says.
"""
import os as _os
import sys as _sys

_CHECKOUT = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if "gfcore" not in _sys.modules:
    _sys.path[:] = [p for p in _sys.path if _os.path.abspath(p or _os.getcwd()) != _CHECKOUT] + [_CHECKOUT]
