"""logitlab: the mechanistic-interpretability battery for contrastive next-token tasks.

Example:
    >>> import logitlab
    >>> model = logitlab.load_model()                # built-in Gemma-3-270M
    >>> task = logitlab.load_task("pronouns")
    >>> run = logitlab.clean_run(model, logitlab.tokenize_task(task, model.tokenizer))
    >>> logitlab.analyses.head_attribution(run).top(3)
"""

from logitlab._version import __version__
from logitlab._alloc import keep_freed_memory  # noqa: E402
from logitlab.errors import LogitlabError  # noqa: E402
from logitlab.model.load import Model, load_model  # noqa: E402
from logitlab.task import Task, load_task, tokenize_task  # noqa: E402
from logitlab import analyses  # noqa: E402
from logitlab.analyses import clean_run  # noqa: E402
from logitlab.battery import RunConfig, run_battery, write_results  # noqa: E402

__all__ = ["LogitlabError", "Model", "load_model", "Task", "load_task", "tokenize_task", "analyses", "clean_run",
           "RunConfig", "run_battery", "write_results", "keep_freed_memory", "__version__"]
