"""The results types of exact activation patching, written by :mod:`logitlab.analyses.patching`.

One type, :class:`PositionPatching`, serves the three per-position sections (``resid_patching``,
``attn_patching``, ``mlp_patching``): they share every field, and the two mean logit differences are on
``resid_patching`` only (as on :class:`PatchingSet`). ``ResidPatching``, ``AttnPatching`` and ``MlpPatching`` are
its names kept for older imports. The sections' registered types (:data:`ResidPatchingSection`, …) add each
section's description and check that the mean logit differences are where they belong.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field
from typing_extensions import NotRequired, TypedDict

from logitlab.results._base import Cube, Matrix, section

__all__ = ["PatchingScreen", "PatchingSet", "HeadPatchingSet", "PositionPatching", "ResidPatching", "AttnPatching", "MlpPatching",
           "HeadPatching", "PatchingSections", "ResidPatchingSection", "AttnPatchingSection", "MlpPatchingSection"]


#: The ``screen`` entry of the position and head sections (:meth:`logitlab.screen.Screen.to_dict`), documented once.
PatchingScreen = Annotated[dict[str, Any] | None, Field(description=(
    "how the generated pairs' cells were screened (null: every cell exact): `estimator` (atp), `n_cells`, "
    "`n_flagged` (the top cells by |estimate|), `n_sampled` (a seeded random sample of the others), `n_exact`, "
    "`left_out_max_estimate`, `sample_max_error` (max |exact − estimate| on the sample), `sample_max_exact`, "
    "`max_error` (over every exact cell), `bound` (how large a screened-out cell can be expected to be)"))]


@section
class PatchingSet(TypedDict):
    """Patching per layer and position over one set of pairs: one template's generated pairs (of one token
    length) or all templates pooled. Pairs with |clean − corrupted| < 1 logit are left out and counted."""

    template: str | None
    """the template (`{}` = the subject); null for the pooled set"""
    tokens: list[str]
    """position labels: the subject's tokens as `{name}`, the other tokens as themselves (`[final]`: the final
    position where the pooled templates' tokens differ)"""
    values: Matrix
    """[L][P] mean over the used pairs of each pair's (patched − corrupted)/(clean − corrupted)"""
    stderr: Matrix
    """[L][P] standard error over the used pairs"""
    ci: Cube
    """[L][P][2] 95% bootstrap CI over the used pairs (2,000 resamples, seeded)"""
    n_pairs: int
    """pairs used"""
    n_excluded: int
    """pairs left out: |clean − corrupted| < 1 logit"""
    method: NotRequired[list[list[Literal["exact", "estimated"]]]]
    """[L][P] how each cell was computed: `exact` (patched on every used pair) or `estimated` (screened out: the
    mean first-order estimate, attribution patching, on the same pairs); absent in files from before screening
    (all exact)"""
    clean_logit_diff: NotRequired[float]
    """(resid only) mean clean logit difference over the used pairs"""
    corrupted_logit_diff: NotRequired[float]
    """(resid only) the same on the corrupted prompts"""


@section
class HeadPatchingSet(TypedDict):
    """Head patching over one set of pairs (one template, or all pooled)."""

    template: str | None
    """the template; null for the pooled set"""
    values: Matrix
    """[L][H] mean over the used pairs of the per-pair normalised value"""
    stderr: Matrix
    """[L][H]"""
    ci: Cube
    """[L][H][2] 95% bootstrap CI over the used pairs"""
    n_pairs: int
    """pairs used"""
    n_excluded: int
    """pairs left out (gap < 1 logit)"""
    method: NotRequired[list[list[Literal["exact", "estimated"]]]]
    """[L][H] how each cell was computed: `exact` (patched on every used pair) or `estimated` (screened out: the
    mean first-order estimate, attribution patching, on the same pairs); absent in files from before screening
    (all exact)"""


@section
class PositionPatching(TypedDict):
    """Patching one component per layer and position, clean into corrupted, normalised per pair by its gap."""

    tokens: list[str]
    """the clean prompt's token strings (reference pairs), or the pooled position labels"""
    values: Matrix
    """[L][P] normalised: mean over the used pairs of each pair's (patched − corrupted)/(clean − corrupted), by its
    own gap; 0 = no effect, 1 = fully restored"""
    clean_logit_diff: NotRequired[float]
    """(on `resid_patching` only, required there) mean over the used pairs (over all of them when none is used),
    the clean prompt's answers"""
    corrupted_logit_diff: NotRequired[float]
    """(on `resid_patching` only, required there) the same on the corrupted prompts"""
    stderr: Matrix
    """[L][P] standard error of `values` over the used pairs (0 for one pair)"""
    ci: Cube
    """[L][P][2] 95% bootstrap CI of `values` over the used pairs ([v, v] for one pair)"""
    n_pairs: int
    """pairs used in `values`"""
    n_excluded: int
    """pairs of that set left out: |clean − corrupted| < 1 logit"""
    method: NotRequired[list[list[Literal["exact", "estimated"]]]]
    """[L][P] how each cell was computed: `exact` (patched on every used pair) or `estimated` (screened out: the
    mean first-order estimate, attribution patching, on the same pairs); absent in files from before screening
    (all exact)"""
    screen: NotRequired[PatchingScreen]
    precision: NotRequired[dict[str, Any] | None]
    """(on `resid_patching`) how many generated pairs the precision target took: `target` (95% CI half-width
    asked for, units of the gap; 0: every pair), `achieved` (the widest half-width over the pooled cells),
    `met`, `n_pairs` (generated pairs patched), `n_available`, `rounds`; null without generated pairs"""
    pairs: Literal["reference", "pooled"]
    """which pairs `values` holds"""
    pooled: PatchingSet | None
    """the generated pairs of every template, pooled on aligned positions: all positions when the templates'
    position labels agree, else those shared from the start (`<bos>`, `{name}`, …) and from the end (…, final);
    null when `values` already holds them or the task generates no pair"""
    per_template: list[PatchingSet]
    """the generated pairs, one set per template (and token length) with a pair of gap ≥ 1 logit"""


ResidPatching = AttnPatching = MlpPatching = PositionPatching  # the three sections' former names

_GAPS = ("clean_logit_diff", "corrupted_logit_diff")


def _with_gaps(section: Any) -> Any:
    missing = [k for k in _GAPS if k not in section]
    if missing:
        raise ValueError(f"{missing[0]} is required in resid_patching")
    return section


def _without_gaps(section: Any) -> Any:
    extra = [k for k in _GAPS if k in section]
    if extra:
        raise ValueError(f"{extra[0]} belongs to resid_patching only")
    return section


ResidPatchingSection = Annotated[PositionPatching, AfterValidator(_with_gaps), Field(description=(
    "Patching `resid_pre`, clean into corrupted, per layer and position (absent when the task yields no pair: no "
    "explicit `patching:` pair and no two subjects of different classes with prompts of one token length). "
    "`values` holds the task's explicit `patching:` pairs when one of them has a gap of at least 1 logit "
    "(`pairs: \"reference\"`), else the pairs generated from the templates, pooled (`pairs: \"pooled\"`). Pairs "
    "whose |clean − corrupted| is below 1 logit are left out of every normalised number and counted in "
    "`n_excluded`; when no pair is left, `values`, `stderr` and `ci` are empty lists."))]
AttnPatchingSection = Annotated[PositionPatching, AfterValidator(_without_gaps), Field(
    description="Patching one layer's attention output (after any post-attention norm) at one position, as "
                "`resid_patching`.")]
MlpPatchingSection = Annotated[PositionPatching, AfterValidator(_without_gaps), Field(
    description="Patching one layer's MLP output at one position, as `resid_patching`.")]


@section
class HeadPatching(TypedDict):
    """Patching one head's `hook_z` output at every position."""

    values: Matrix
    """[L][H] normalised as `resid_patching.values`"""
    stderr: Matrix
    """[L][H]"""
    ci: Cube
    """[L][H][2] 95% bootstrap CI"""
    n_pairs: int
    """pairs used"""
    n_excluded: int
    """pairs left out (gap < 1 logit)"""
    method: NotRequired[list[list[Literal["exact", "estimated"]]]]
    """[L][H] how each cell was computed: `exact` (patched on every used pair) or `estimated` (screened out: the
    mean first-order estimate, attribution patching, on the same pairs); absent in files from before screening
    (all exact)"""
    screen: NotRequired[PatchingScreen]
    pairs: Literal["reference", "pooled"]
    """as `resid_patching.pairs`"""
    pooled: HeadPatchingSet | None
    """every generated pair (heads pool over all templates); null as `resid_patching.pooled`"""
    per_template: list[HeadPatchingSet]
    """one set per template (and token length)"""


class PatchingSections(TypedDict, total=False):
    """What activation patching's ``to_dict()`` returns: its four results sections (none without a pair)."""

    resid_patching: PositionPatching
    attn_patching: PositionPatching
    mlp_patching: PositionPatching
    head_patching: HeadPatching
