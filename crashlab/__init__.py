"""crashlab: forensic replay toolkit for crypto market crashes.

The stages live in top-level folders of the checkout and are installed as subpackages:
`crashlab.ingest` (ingest/), `crashlab.replay` (replay/), `crashlab.analysis` (analysis/).
"""

from crashlab.ingest import __version__

__all__ = ["__version__"]
