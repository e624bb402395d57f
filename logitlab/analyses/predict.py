"""Top-k next-token predictions of a prompt, and the rank of an answer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor

from logitlab.analyses._common import CleanRun
from logitlab.errors import LogitlabError
from logitlab.model.load import Model
from logitlab.registry import setting
from logitlab.results.core import Prediction as PredictionSection
from logitlab.task import encode_prompt, single_token_id

__all__ = ["PredictionSettings", "Prediction", "predict", "task_predictions"]


@dataclass(frozen=True)
class PredictionSettings:
    """How many of the task's first prompts get their top-k next tokens in ``predictions``."""

    top_k: int = setting(10, "top-k next tokens per example prompt", flag="--top-k",
                         help="Top-k predictions to show per example prompt.")
    n_predictions: int = setting(4, "how many prompts get top-k predictions")

    def __post_init__(self) -> None:
        if self.top_k < 1 or self.n_predictions < 0:
            raise LogitlabError("top_k must be ≥ 1 and n_predictions ≥ 0")


@dataclass(frozen=True)
class Prediction:
    prompt: str
    tokens: tuple[str, ...]
    top: tuple[tuple[str, float, float], ...]  # (token, logit, prob)
    answer: str | None
    answer_rank: int | None
    answer_prob: float | None
    answer_logit: float | None

    def to_dict(self) -> PredictionSection:
        return cast(PredictionSection, {"prompt": self.prompt, "tokens": list(self.tokens),
                "top": [{"token": t, "logit": lo, "prob": p} for t, lo, p in self.top],
                "answer": self.answer, "answer_rank": self.answer_rank, "answer_prob": self.answer_prob})


def _prediction(model: Model, prompt: str, tokens: tuple[str, ...], logits: Tensor, answer_id: int | None,
                answer: str | None, k: int) -> Prediction:
    logits = logits.float()
    probs = logits.softmax(-1)
    top = probs.topk(k)
    rows = tuple((model.tokenizer.decode([int(i)]), float(logits[i]), float(p)) for p, i in zip(top.values, top.indices))
    rank = prob = logit = None
    if answer_id is not None:
        rank = int((logits > logits[answer_id]).sum())
        prob, logit = float(probs[answer_id]), float(logits[answer_id])
    return Prediction(prompt, tokens, rows, answer, rank, prob, logit)


def predict(model: Model, prompt: str, answer: str | None = None, k: int = 10, prepend_bos: bool = True) -> Prediction:
    """The model's top-k next tokens after ``prompt`` with logits and probabilities; the answer's rank."""
    ids = encode_prompt(model.tokenizer, prompt, prepend_bos)
    r = model.runner
    with torch.no_grad():
        tokens = torch.tensor([ids], device=r.device)
        logits = r.last_logits(tokens, torch.tensor([len(ids) - 1], device=r.device))[0]  # the last position only
    a = single_token_id(model.tokenizer, answer) if answer is not None else None
    return _prediction(model, prompt, tuple(model.to_str_tokens(ids)), logits, a, answer, k)


def task_predictions(run: CleanRun, n: int, k: int = 10) -> list[Prediction]:
    """:func:`predict` for the task's first ``n`` prompts with their correct answers, read off the clean run."""
    t = run.task
    n = min(n, t.n_prompts)
    rows = torch.arange(n, device=run.cache.resid_final.device)
    with torch.no_grad():
        logits = run.model.runner.unembed(run.cache.resid_final[rows, t.final_pos[:n].to(rows.device)])
    return [_prediction(run.model, t.task.prompts[i], t.str_tokens[i], logits[i], int(t.correct_ids[i]),
                        t.task.correct[i], k) for i in range(n)]
