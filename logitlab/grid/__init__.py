"""Grids of runs: models × tasks (× checkpoints), each cell an independent job, in this process or on Ray.

Example:
    >>> from logitlab.grid import load_grid, run_grid
    >>> grid = load_grid("grid.yaml")
    >>> statuses = run_grid(grid, Path("grid-out"))            # or ray="local" / "auto" / an address
    >>> [s.status for s in statuses]                          # done, skipped or failed; also in grid-out/grid.json

Details: docs/scaling.md.
"""

from logitlab.grid.memory import MemoryEstimate, check_memory, estimate_memory
from logitlab.grid.run import CellStatus, run_grid
from logitlab.grid.spec import Cell, Grid, grid_from_dict, load_grid

__all__ = ["Cell", "Grid", "CellStatus", "MemoryEstimate", "load_grid", "grid_from_dict", "run_grid",
           "estimate_memory", "check_memory"]
