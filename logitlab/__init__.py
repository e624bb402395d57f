"""logitlab: the mechanistic-interpretability battery for contrastive next-token tasks.

Example:
    >>> import logitlab
    >>> model = logitlab.load_model()                # built-in Gemma-3-270M
    >>> task = logitlab.load_task("pronouns")
    >>> run = logitlab.clean_run(model, logitlab.tokenize_task(task, model.tokenizer))
    >>> logitlab.analyses.head_attribution(run).top(3)
"""

from logitlab import analyses
from logitlab._alloc import keep_freed_memory
from logitlab._version import __version__
from logitlab.analyses import clean_run
from logitlab.battery import RunConfig, run_battery, write_results
from logitlab.errors import LogitlabError
from logitlab.model.load import Model, load_model
from logitlab.task import Task, load_task, tokenize_task

__all__ = ["LogitlabError", "Model", "load_model", "Task", "load_task", "tokenize_task", "analyses", "clean_run",
           "RunConfig", "run_battery", "write_results", "keep_freed_memory", "__version__"]
