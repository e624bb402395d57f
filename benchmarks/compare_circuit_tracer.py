"""Compare logitlab's attribution graphs with circuit-tracer 0.5's ``attribute`` on the same model and transcoders.

Builds a tiny random Llama (grouped KV heads) and a tiny random Gemma-3 (post-norms, embedding scale, sliding
window) as Hugging Face folders with tests/tiny.py, writes random per-layer transcoders for them in
circuit-tracer's format, runs circuit-tracer's nnsight backend on them in its own environment (a subprocess) and
logitlab's ``attribute`` here, aligns the nodes and prints the largest difference of every adjacency block.

circuit-tracer pins an older transformers, so it lives in its own venv (``--env``, built when missing):
    pip install torch==2.13.0 && pip install circuit-tracer==0.5.0 && pip install nnsight==0.6.3
(nnsight 0.8 changed the module layout circuit-tracer's backend imports). Run from the repository root, since it
imports tests/tiny.py:
    PYTHONPATH=. python benchmarks/compare_circuit_tracer.py [--env /tmp/ct-env] [--work DIR]
``--builtin --transcoders DIR`` runs the same comparison on the built-in model (Gemma-3-270M) with trained
transcoders instead, on the 10-token prompt, with the time and peak memory of both sides: it is
bench_graph_vs_circuit_tracer.py's first length (that script also runs longer prompts under a row budget).

Alignment: circuit-tracer's node order is features (layer, position, feature), error nodes (layer-major, then
position), tokens, logit targets, the same as logitlab's; features are matched by (layer, position, feature index)
and logit targets by token id (circuit-tracer is given logitlab's top-logit tokens as its targets; both use
unembedding column − mean column). Position 0 (BOS) has no features on either side (circuit-tracer zeroes them,
logitlab makes none); its error nodes are zero columns on both. Differences: max |Δ| over the block, and that
divided by max |logitlab| over the block ("rel").

MLP input: the transcoders are handed to circuit-tracer as ``save_circuit_tracer(dicts, folder, model)``
writes them. logitlab's ``mlp_in`` is the MLP norm's output without its weight (folded into the MLP); on Llama
the file reads circuit-tracer's ``mlp.hook_in`` (the norm's output with its weight: the writer divides the weight
out of ``W_enc`` and ``W_skip``), on Gemma-3 ``ln2.hook_normalized`` (before the weight: written as is). The
tiny models' norm weights are random, so a wrong input point shows as different features.

BOS: with a skip connection, logitlab freezes position 0's whole MLP output (skip included) into the bias, while
circuit-tracer lets the BOS token's edges run through position 0's skip path; the token blocks are also printed
without the BOS column.

Gemma: circuit-tracer 0.5's nnsight backend reads token nodes as raw embedding rows, without Gemma's √d_model
embedding scale (the gradient is taken at the scaled embedding's output), so its token columns come out √d_model
too small; the token blocks are printed raw and with circuit-tracer's token columns multiplied by the scale.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

PROMPT = "Mary is a great friend, isn’t"

CT_SNIPPET = r"""
import json, sys, numpy as np, torch
torch.set_num_threads(1)
from circuit_tracer import ReplacementModel, attribute
model_dir, tc_dir, ids_json, out = sys.argv[1:5]
spec = json.loads(ids_json)
model = ReplacementModel.from_pretrained(model_dir, tc_dir, backend="nnsight", device=torch.device("cpu"),
                                         dtype=torch.float32)
g = attribute(torch.tensor(spec["ids"]), model, attribution_targets=torch.tensor(spec["targets"]), batch_size=64)
tok = [int(t.vocab_idx) for t in g.logit_targets]
np.savez(out, adjacency=g.adjacency_matrix.float().numpy(), features=g.active_features.numpy(),
         activations=g.activation_values.float().numpy(), tokens=g.input_tokens.cpu().numpy(),
         logit_tokens=np.array(tok), n_layers=g.cfg.n_layers)
"""


def ensure_env(env: Path) -> Path:
    """circuit-tracer's venv: reuse it if it imports circuit_tracer, else build it."""
    py = env / "bin" / "python"
    if py.exists() and subprocess.run([str(py), "-c", "import circuit_tracer, nnsight"],
                                      capture_output=True).returncode == 0:
        return py
    print(f"building circuit-tracer's environment in {env} (a few minutes)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
    pip = [str(py), "-m", "pip", "install", "-q"]
    for pkg in ("torch==2.13.0", "circuit-tracer==0.5.0", "nnsight==0.6.3"):
        subprocess.run(pip + [pkg], check=True)
    return py


def copy_for_old_transformers(model_dir: Path, dest: Path) -> Path:
    """A copy of the model folder that circuit-tracer's transformers (4.57) reads as the same model: the tokenizer
    class by its 4.x name, and the rotary bases at the top level of config.json (where 4.x looks for them)."""
    import shutil
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(model_dir, dest)
    tc = json.loads((dest / "tokenizer_config.json").read_text())
    tc["tokenizer_class"] = "PreTrainedTokenizerFast"
    tc.pop("backend", None)
    (dest / "tokenizer_config.json").write_text(json.dumps(tc, indent=1))
    cfg = json.loads((dest / "config.json").read_text())
    rp = cfg.get("rope_parameters") or {}
    if "rope_theta" in rp:
        cfg["rope_theta"] = rp["rope_theta"]
    elif "full_attention" in rp:  # Gemma-3: one rotary base per attention type
        cfg["rope_theta"] = rp["full_attention"]["rope_theta"]
        cfg["rope_local_base_freq"] = rp["sliding_attention"]["rope_theta"]
        for t in ("full_attention", "sliding_attention"):
            assert rp[t].get("rope_type", "default") == "default", rp
    (dest / "config.json").write_text(json.dumps(cfg, indent=1))
    return dest


def run_circuit_tracer(py: Path, model_dir: Path, tc_dir: Path, ids: list[int], targets: list[int],
                       out: Path) -> dict[str, np.ndarray]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH="")
    r = subprocess.run([str(py), "-c", CT_SNIPPET, str(model_dir), str(tc_dir.resolve()),
                        json.dumps({"ids": ids, "targets": targets}), str(out)],
                       env=env, capture_output=True, text=True, cwd=str(out.parent))
    if r.returncode != 0:
        raise SystemExit(f"circuit-tracer failed:\n{r.stdout[-4000:]}\n{r.stderr[-6000:]}")
    return dict(np.load(out))


def _block(ours: torch.Tensor, theirs: torch.Tensor) -> tuple[float, float, float]:
    if ours.numel() == 0:
        return 0.0, 0.0, 0.0
    d = float((ours - theirs).abs().max())
    scale = float(ours.abs().max())
    return d, d / max(scale, 1e-30), scale


def compare(kind: str, variant: str, work: Path, py: Path) -> None:
    from logitlab.features.formats import save_circuit_tracer
    from logitlab.features.graph import attribute
    from logitlab.model.load import load_model
    from tests.tiny import make_model_folder, random_dictionaries

    folder = work / kind
    model_dir = folder / "model" if (folder / "model" / "config.json").exists() else \
        make_model_folder(kind, folder / "model")
    model = load_model(str(model_dir), cache=False)
    s = model.spec
    dicts = random_dictionaries(s.d_model, s.n_layers, variant)
    tc_dir = save_circuit_tracer(dicts, folder / f"tc_{variant}", model)
    hook = (tc_dir / "config.yaml").read_text().split("feature_input_hook: ")[1].split()[0]

    tok = model.tokenizer
    ids = [tok.bos_token_id] + tok(PROMPT, add_special_tokens=False)["input_ids"]
    g = attribute(model, ids, dicts, dtype=torch.float32, freeze_massive=False)  # circuit-tracer freezes BOS alone
    targets = [int(t) for t in g.logit_tokens]
    ct = run_circuit_tracer(py, copy_for_old_transformers(model_dir, folder / "model_ct"), tc_dir, ids, targets,
                            folder / f"{tc_dir.name}.npz")

    L, T = s.n_layers, len(ids)
    assert ct["tokens"].tolist() == ids, (ct["tokens"].tolist(), ids)
    assert int(ct["n_layers"]) == L
    A = torch.as_tensor(ct["adjacency"], dtype=torch.float64)
    feats_ct = [tuple(int(v) for v in row) for row in ct["features"]]
    feats_ll = [tuple(int(v) for v in row) for row in g.features]
    idx_ct = {f: i for i, f in enumerate(feats_ct)}
    common = [f for f in feats_ll if f in idx_ct]
    only_ll = [f for f in feats_ll if f not in idx_ct]
    only_ct = [f for f in feats_ct if f not in set(feats_ll)]
    n_ct = len(feats_ct)
    lt_ct = [int(v) for v in ct["logit_tokens"]]
    assert lt_ct == targets, (lt_ct, targets)

    # logitlab's rows/columns restricted to the common features, in logitlab's order; circuit-tracer's permuted
    pos_ll = {f: i for i, f in enumerate(feats_ll)}
    fi_ll = torch.tensor([pos_ll[f] for f in common], dtype=torch.long)
    fi_ct = torch.tensor([idx_ct[f] for f in common], dtype=torch.long)
    n_f, n_l = g.n_features, g.n_logits
    err_ll = torch.arange(n_f, n_f + L * T)
    err_ct = torch.arange(n_ct, n_ct + L * T)
    tok_ll = torch.arange(n_f + L * T, n_f + L * T + T)
    tok_ct = torch.arange(n_ct + L * T, n_ct + L * T + T)
    log_ll = torch.arange(g.n_nodes - n_l, g.n_nodes)
    log_ct = torch.arange(A.shape[0] - n_l, A.shape[0])
    ours = g.adjacency.double()
    act_ll = g.activations.double()[fi_ll]
    act_ct = torch.as_tensor(ct["activations"], dtype=torch.float64)[fi_ct]

    print(f"\n== {kind} ({s.model_type}, d_model {s.d_model}, {L} layers, embed scale {s.embed_scale:.4g}), "
          f"transcoders {variant} on {hook}, {T} tokens")
    print(f"   features: logitlab {len(feats_ll)}, circuit-tracer {n_ct}, common {len(common)}; "
          f"only logitlab {only_ll[:5]}, only circuit-tracer {only_ct[:5]}; "
          f"position-0 features in circuit-tracer: {sum(1 for f in feats_ct if f[1] == 0)}")
    d, rel, _ = _block(act_ll, act_ct)
    print(f"   activations: max |Δ| {d:.2e}, rel {rel:.2e}; logit targets {targets}")
    rows = {"feature": (fi_ll, fi_ct), "logit": (log_ll, log_ct)}
    cols = {"feature": (fi_ll, fi_ct), "error": (err_ll, err_ct), "token": (tok_ll, tok_ct)}
    scale = float(s.embed_scale)
    print(f"   {'block':<18}{'max |Δ|':>11}{'rel':>11}{'max |ref|':>11}")
    for rn, (r_ll, r_ct) in rows.items():
        for cn, (c_ll, c_ct) in cols.items():
            a = ours[r_ll][:, c_ll]
            b = A[r_ct][:, c_ct]
            d, rel, ref = _block(a, b)
            print(f"   {rn + '←' + cn:<18}{d:>11.2e}{rel:>11.2e}{ref:>11.2e}")
            if cn == "token":
                if scale != 1.0:
                    d, rel, ref = _block(a, b * scale)
                    print(f"   {'  ×√d_model':<18}{d:>11.2e}{rel:>11.2e}{ref:>11.2e}")
                d, rel, ref = _block(a[:, 1:], b[:, 1:] * scale)
                print(f"   {'  without BOS':<18}{d:>11.2e}{rel:>11.2e}{ref:>11.2e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--env", default="/tmp/ct-env", help="circuit-tracer's venv (built when missing)")
    ap.add_argument("--work", default=None, help="folder for the models, transcoders and outputs (default: temp)")
    ap.add_argument("--builtin", action="store_true",
                    help="compare on the built-in model with trained transcoders (bench_graph_vs_circuit_tracer.py)")
    ap.add_argument("--transcoders", default=None,
                    help="with --builtin: the built-in model's transcoders in circuit-tracer's format (a folder)")
    args = ap.parse_args()
    if args.builtin:
        if args.transcoders is None:
            ap.error("--builtin needs --transcoders DIR")
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from bench_graph_vs_circuit_tracer import main as builtin_main
        builtin_main([args.transcoders, "--lengths", "10", "--max-feature-nodes", "0",
                      "--ct-batch", "64", "--env", args.env] + (["--work", args.work] if args.work else []))
        return
    torch.set_num_threads(1)
    py = ensure_env(Path(args.env))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        for kind, variant in (("llama_gqa", "relu"), ("llama_gqa", "jumprelu_skip"),
                              ("gemma3", "relu"), ("gemma3", "jumprelu_skip")):
            compare(kind, variant, work, py)


if __name__ == "__main__":
    main()
