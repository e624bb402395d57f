"""The sections of the report, one module each; importing this package registers every one of them.

Each module here defines its figures, finding rules, HTML and (optionally) its part of compare.html, and ends
with one :func:`logitlab.report.registry.register` call. A module added to this folder is found and imported
below (modules whose name starts with ``_`` hold shared code and register nothing); the report's order comes
from the analysis registry (:mod:`logitlab.registry`: each section names its analysis), not from this folder.
"""

from __future__ import annotations

import importlib
import pkgutil

#: The modules imported (and so registered) here, by name.
MODULES = tuple(sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")))

for _name in MODULES:
    importlib.import_module(f"{__name__}.{_name}")
