"""Top-k next-token predictions of a prompt, and the rank of an answer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from logitlab.model.load import Model
from logitlab.task import encode_prompt, single_token_id

__all__ = ["Prediction", "predict"]


@dataclass(frozen=True)
class Prediction:
    prompt: str
    tokens: tuple[str, ...]
    top: tuple[tuple[str, float, float], ...]  # (token, logit, prob)
    answer: str | None
    answer_rank: int | None
    answer_prob: float | None
    answer_logit: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "tokens": list(self.tokens),
                "top": [{"token": t, "logit": lo, "prob": p} for t, lo, p in self.top],
                "answer": self.answer, "answer_rank": self.answer_rank, "answer_prob": self.answer_prob}


def predict(model: Model, prompt: str, answer: str | None = None, k: int = 10, prepend_bos: bool = True) -> Prediction:
    """The model's top-k next tokens after ``prompt`` with logits and probabilities; the answer's rank."""
    ids = encode_prompt(model.tokenizer, prompt, prepend_bos)
    r = model.runner
    with torch.no_grad():
        logits = r.logits(torch.tensor([ids], device=r.device))[0, -1].float()
    probs = logits.softmax(-1)
    top = probs.topk(k)
    rows = tuple((model.tokenizer.decode([int(i)]), float(logits[i]), float(p)) for p, i in zip(top.values, top.indices))
    rank = prob = logit = None
    if answer is not None:
        a = single_token_id(model.tokenizer, answer)
        rank = int((logits > logits[a]).sum())
        prob, logit = float(probs[a]), float(logits[a])
    return Prediction(prompt, tuple(model.to_str_tokens(ids)), rows, answer, rank, prob, logit)
