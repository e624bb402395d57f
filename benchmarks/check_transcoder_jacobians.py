"""How well each layer's transcoder reproduces its MLP's first-order response, on a prompt's clean run.

An attribution graph routes a feature's effect through the later layers' transcoders (their Jacobian, gates held,
errors held); the real model routes it through the MLPs. This script compares the two Jacobians per layer:
for random directions v (one unit direction per position, scaled to the residual stream's norm there), the
transcoder's J_tc·v against the MLP's J·v, both with the pre-MLP norm's scale held as in the graph (the MLP's own
post-norm, which the transcoder replaces, runs), by central differences in float64. It prints, per layer, the mean
cosine between the two over directions and positions (and at one chosen position), and the median of
|J·v − J_tc·v| / |J·v|.

Usage: python benchmarks/check_transcoder_jacobians.py TRANSCODERS [--model builtin] [--prompt TEXT]
       [--position 6] [--directions 8]
"""

from __future__ import annotations

import argparse
import copy

import torch

from logitlab.features.formats import load_dictionaries
from logitlab.features.held import _norms_held, clean_state
from logitlab.model.load import load_model
from logitlab.model.runner import Runner


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("transcoders")
    ap.add_argument("--model", default="builtin")
    ap.add_argument("--prompt", action="append", help="repeatable (default: two pronoun prompts)")
    ap.add_argument("--position", type=int, default=6, help="a position reported on its own (the comma: 6)")
    ap.add_argument("--directions", type=int, default=8)
    ap.add_argument("--eps", type=float, default=1e-4)
    args = ap.parse_args()
    m = load_model(args.model)
    m = copy.copy(m)
    m.runner = Runner(m.spec, m.runner.w.to(m.runner.device, torch.float64))
    d = load_dictionaries(args.transcoders, m).to(dtype=torch.float64)
    r, L = m.runner, m.spec.n_layers
    gen = torch.Generator().manual_seed(0)
    for prompt in args.prompt or ["Mary is a great friend, isn’t", "John is a great friend, isn’t"]:
        ids = m.tokenizer(prompt, return_tensors="pt")["input_ids"]
        st = clean_state(r, ids, d)
        cache = r.run_with_cache(ids)
        mids = cache.resid_pre if m.spec.parallel else cache.resid_mid  # (layer, 1, T, D): what each MLP reads
        pos = min(args.position, ids.shape[1] - 1)
        print(f"{prompt!r}: layer, cos (all positions), cos (position {pos}), median relative error")
        with _norms_held(r, st):
            for l in range(L):
                src, tc, gate = mids[l], d.layers[l], st.gates[l]

                def tc_out(s: torch.Tensor, tc=tc, gate=gate, l=l) -> torch.Tensor:  # noqa: ANN001
                    xin = r.pre_norm(l, 2, s)
                    return tc.decode(tc.pre(xin) * gate, xin)

                V = torch.randn(args.directions, *src.shape[1:], generator=gen, dtype=src.dtype)
                V = V / V.norm(dim=-1, keepdim=True) * src[0].norm(dim=-1, keepdim=True)
                cos, rel = [], []
                for v in V:
                    e = args.eps
                    jr = ((r.mlp(l, src + e * v) - r.mlp(l, src - e * v)) / (2 * e))[0]  # (T, D)
                    jt = ((tc_out(src + e * v) - tc_out(src - e * v)) / (2 * e))[0]
                    cos.append(torch.nn.functional.cosine_similarity(jr, jt, dim=-1))
                    rel.append((jr - jt).norm(dim=-1) / jr.norm(dim=-1).clamp(min=1e-12))
                c, re_ = torch.stack(cos), torch.stack(rel)
                print(f"  {l:3d}  {float(c.mean()):+.3f}  {float(c[:, pos].mean()):+.3f}  {float(re_.median()):.3f}")


if __name__ == "__main__":
    main()
