"""Circuit formation during training: train a toy model with checkpoints, track the battery across them.

Example:
    >>> from logitlab.formation import ToyConfig, train_toy, find_checkpoints, run_formation
    >>> train_toy(Path("toy"), ToyConfig())
    >>> ckpts = [(s, str(p)) for s, p in find_checkpoints(Path("toy"))]
    >>> results = run_formation(ckpts, load_task("toy/heldout-task.yaml"), Path("toy/formation"), heldout=True)
    >>> write_formation_report(Path("toy/formation"), results)
"""

from logitlab.formation.formation import (
    checkpoint_summary, find_checkpoints, hub_checkpoints, load_checkpoint, run_formation, switch_on_step,
)
from logitlab.formation.report import formation_figures, formation_findings, write_formation_report
from logitlab.formation.toy import SPLIT, Split, ToyConfig, train_toy

__all__ = ["ToyConfig", "Split", "SPLIT", "train_toy", "run_formation", "find_checkpoints", "hub_checkpoints",
           "load_checkpoint", "checkpoint_summary", "switch_on_step", "formation_figures", "formation_findings",
           "write_formation_report"]
