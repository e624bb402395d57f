"""Patching over many pairs on the built-in model: the reference pair's numbers are unchanged, and
``pronouns-large`` yields enough generated pairs."""

from __future__ import annotations

import torch

from logitlab.analyses.patching import activation_patching
from logitlab.task import MAX_PAIRS_PER_TEMPLATE, generated_pairs, load_task, tokenize_task

#: ``resid_patching.values`` of the built-in ``pronouns`` task (its one pair, Mary → John), as computed before
#: patching moved to per-pair normalisation (rounded to 5 decimals).
REFERENCE_RESID = [
    [0.00000, 1.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000, 0.00000],
    [0.00000, 1.00391, 0.00523, 0.00097, 0.00347, 0.00440, 0.00030, -0.00272, -0.00004, -0.00012],
    [0.00000, 1.00140, 0.00749, 0.00097, 0.00531, 0.00668, 0.00035, -0.00172, -0.00025, -0.00116],
    [0.00000, 1.00220, 0.00471, -0.00037, 0.00438, 0.00592, -0.00011, -0.00083, -0.00028, -0.00191],
    [0.00000, 0.99601, 0.03228, 0.00097, 0.00312, 0.00623, -0.00384, 0.00258, -0.00035, 0.00077],
    [0.00000, 0.90958, 0.15418, 0.00494, 0.01916, 0.06701, -0.00268, 0.01426, -0.00053, 0.01673],
    [0.00000, 0.91046, 0.15189, 0.00504, 0.01917, 0.06433, -0.00222, 0.01619, -0.00048, 0.01098],
    [0.00000, 0.89604, 0.12743, 0.00799, 0.01755, 0.07547, -0.00378, 0.01191, -0.00073, 0.01107],
    [0.00000, 0.84248, 0.30825, 0.02235, 0.02088, 0.05755, 0.00364, 0.01950, 0.00023, 0.01278],
    [0.00000, 0.81138, 0.36380, 0.02540, 0.02216, 0.05624, 0.00759, 0.01635, -0.00036, 0.01119],
    [0.00000, 0.12932, 0.41218, 0.06742, 0.09744, 0.11459, 0.09709, 0.09050, 0.00046, 0.07067],
    [0.00000, 0.11413, 0.38197, 0.05577, 0.03616, 0.09396, 0.09940, 0.09137, 0.00026, 0.22108],
    [0.00000, 0.11983, 0.38146, 0.05880, 0.03865, 0.10075, 0.09840, 0.08732, 0.00016, 0.21554],
    [0.00000, 0.08671, 0.36781, 0.04855, 0.03220, 0.08672, 0.10012, 0.09713, -0.00020, 0.27579],
    [0.00000, 0.07996, 0.37568, 0.04232, 0.03556, 0.10093, 0.09878, 0.10403, -0.00010, 0.28294],
    [0.00000, 0.00180, 0.00849, 0.00227, 0.00452, 0.02072, 0.02115, 0.01165, 0.00148, 0.92926],
    [0.00000, -0.00020, -0.00031, 0.00004, 0.00092, 0.00641, 0.00529, 0.00558, 0.00149, 0.97448],
    [0.00000, -0.00086, 0.00023, 0.00039, 0.00034, 0.00043, 0.00052, 0.00016, 0.00043, 0.99899],
]
REFERENCE_CLEAN, REFERENCE_CORRUPTED = 8.15007, -8.06881


def test_reference_pair_numbers_unchanged(builtin_model) -> None:  # noqa: ANN001
    tt = tokenize_task(load_task("pronouns"), builtin_model.tokenizer)
    res = activation_patching(builtin_model, tt, generated=False)
    rp = res.to_dict()["resid_patching"]
    assert rp["pairs"] == "reference" and rp["n_pairs"] == 1 and rp["n_excluded"] == 0
    got, want = torch.tensor(rp["values"]), torch.tensor(REFERENCE_RESID)
    diff = (got - want).abs().max().item()
    assert diff < 1e-4, f"reference-pair resid patching changed: max abs diff {diff}"
    assert abs(rp["clean_logit_diff"] - REFERENCE_CLEAN) < 1e-4, rp["clean_logit_diff"]
    assert abs(rp["corrupted_logit_diff"] - REFERENCE_CORRUPTED) < 1e-4, rp["corrupted_logit_diff"]
    ci = torch.tensor(rp["ci"])
    assert torch.equal(ci[..., 0], got) and torch.equal(ci[..., 1], got), "one pair: the CI is [v, v]"


def test_generated_pairs_on_the_builtin_tokenizer(builtin_model) -> None:  # noqa: ANN001
    tok = builtin_model.tokenizer
    small = generated_pairs(tokenize_task(load_task("pronouns"), tok))
    assert sum(g.n_pairs for g in small) == 40, "pronouns: 4 she/he pairs × 2 directions × 5 templates"
    tt = tokenize_task(load_task("pronouns-large"), tok)
    groups = generated_pairs(tt)
    n = sum(g.n_pairs for g in groups)
    assert n >= 100, f"pronouns-large yields only {n} generated pairs"
    assert n <= MAX_PAIRS_PER_TEMPLATE * len(tt.task.templates)
    for g in groups:
        for i, j in zip(g.clean_index, g.corrupted_index):
            assert tt.task.prompt_class[i] != tt.task.prompt_class[j]
            assert int(tt.final_pos[i]) == int(tt.final_pos[j]) == g.clean_tokens.shape[1] - 1
