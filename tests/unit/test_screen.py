"""The screen's selection: top cells by |estimate|, a seeded sample of the rest, and its measured bound."""

import torch

from logitlab.screen import ESTIMATED, EXACT, methods, select


def test_top_and_sample_are_disjoint_and_deterministic() -> None:
    est = torch.tensor([0.1, -5.0, 0.3, 2.0, 0.0, -0.2, 0.05, 1.0])
    s = select(est, top=3, sample=2)
    assert s.flagged.nonzero().flatten().tolist() == [1, 3, 7]  # |−5| > |2| > |1|
    assert int(s.sampled.sum()) == 2 and not bool((s.sampled & s.flagged).any())
    again = select(est, top=3, sample=2)
    assert torch.equal(again.sampled, s.sampled)
    left = ~s.exact
    assert s.left_out_max_estimate == float(est[left].abs().max())


def test_ties_broken_by_index_and_always_flagged() -> None:
    s = select(torch.tensor([1.0, -1.0, 1.0, 0.0]), top=2, sample=0, always=torch.tensor([0, 0, 0, 1]).bool())
    assert s.flagged.tolist() == [True, True, False, True]


def test_complete_screen_and_bound() -> None:
    est = torch.arange(6.0)
    assert select(est, top=6, sample=0).complete and select(est, top=-1, sample=0).bound == 0.0
    s = select(est, top=2, sample=2)
    exact = est + torch.tensor([0.0, 0.5, -0.25, 0.0, 0.0, 0.0])
    m = s.measured(est, exact)
    sampled = s.sampled.nonzero().flatten()
    assert m.sample_max_error == float((exact - est)[sampled].abs().max())
    assert m.bound >= m.left_out_max_estimate and m.bound >= m.sample_max_exact
    d = m.to_dict()
    assert d["n_exact"] == 4 and d["n_cells"] == 6 and d["bound"] == m.bound
    labels = methods(s, (2, 3))
    assert [x for row in labels for x in row] == [EXACT if e else ESTIMATED for e in s.exact.tolist()]
    assert methods(None, (2, 3)) == [[EXACT] * 3] * 2
