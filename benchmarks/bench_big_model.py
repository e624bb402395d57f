"""Benchmark: a ~1B model in bfloat16 end to end on the CPU: load time, run time, peak memory, the estimate.

The model has the real shape of Llama-3.2-1B (hidden 2048, 16 layers, 32 heads, 8 KV heads, intermediate 8192,
vocabulary 128,256, ``rope_type: llama3``, tied embeddings: 1.24 B parameters) with random bfloat16 weights,
saved as a Hugging Face folder; time and memory do not depend on the weights' values. Its tokenizer is a
byte-level BPE trained here on the built-in ``pronouns`` task's prompts and answers (its ids are a small part of
the vocabulary, which changes nothing in the cost: every logit is still computed where the loss needs it).

Three measurements, each its own process under ``/usr/bin/time -v`` (wall time, peak RSS), with a fresh
logitlab cache:

1. ``load``: ``load_model(folder, dtype="bfloat16")`` with no processed weights cached (boots the bridge on
   the float32 model, reads the weights in bfloat16, writes the cache);
2. ``warm load``: the same again, now from the cache;
3. ``run``: ``logitlab run --model FOLDER --dtype bfloat16 --analyses ABLATION --patching-pairs 0`` on the
   built-in ``pronouns`` task (a warm load, then the battery).

Next to each, the memory estimate made before loading (``logitlab.model.memory.estimate_memory``).
``LOGITLAB_IGNORE_MEMORY_ESTIMATE=1`` is set so that a pessimistic estimate does not stop the measurement.

Usage: python benchmarks/bench_big_model.py [--layers 16] [--vocab 128256] [--analyses ablation] [--dir DIR]
Run it alone (check ``uptime``): the cold load holds several GiB and takes minutes on two cores.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build(folder: Path, layers: int, vocab: int) -> None:
    """Save the random bfloat16 model and its tokenizer to ``folder`` (once)."""
    if (folder / "config.json").is_file():
        return
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

    from logitlab.task import load_task
    task = load_task("pronouns")
    corpus = list(task.prompts) + [a for answers in task.correct for a in (answers if isinstance(answers, list)
                                                                           else [answers])]
    corpus += [" she", " he", " it", " they"] * 50
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus * 5, trainers.BpeTrainer(vocab_size=2000, special_tokens=["<bos>", "<pad>"],
                                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", pad_token="<pad>")
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(folder))
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=2048, intermediate_size=8192, num_hidden_layers=layers,
                      num_attention_heads=32, num_key_value_heads=8, head_dim=64, max_position_embeddings=131072,
                      rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=True, bos_token_id=0,
                      pad_token_id=1, eos_token_id=0, architectures=["LlamaForCausalLM"],
                      rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.save_pretrained(str(folder), safe_serialization=True)


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in GiB, standard output) of ``cmd`` under /usr/bin/time -v."""
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], env=env, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    if proc.returncode != 0 or rss is None:
        raise SystemExit(f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return wall, int(rss.group(1)) / 2**20, proc.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--analyses", default="ablation")
    ap.add_argument("--dir", type=Path, default=None, help="where to keep the model folder (default: a temp dir)")
    args = ap.parse_args()
    work = Path(args.dir or tempfile.mkdtemp(prefix="logitlab-big-"))
    folder = work / f"llama3-1b-shape-L{args.layers}-V{args.vocab}"
    t0 = time.perf_counter()
    build(folder, args.layers, args.vocab)
    print(f"model folder {folder} ready in {time.perf_counter() - t0:.0f} s", flush=True)
    cache = Path(tempfile.mkdtemp(prefix="logitlab-cache-", dir=work))
    env = {**os.environ, "LOGITLAB_CACHE": str(cache), "LOGITLAB_IGNORE_MEMORY_ESTIMATE": "1",
           "PYTHONPATH": str(ROOT)}
    py = sys.executable
    est = (f"import json; from dataclasses import asdict; from logitlab.model.memory import estimate_memory; "
           f"print(json.dumps(asdict(estimate_memory({str(folder)!r}, 'bfloat16', 'cpu'))))")
    load = (f"import time; t = time.perf_counter(); from logitlab.model.load import load_model; "
            f"m = load_model({str(folder)!r}, dtype='bfloat16'); "
            f"print('LOAD', time.perf_counter() - t, m.runner.w.W_in.dtype)")
    rows = []
    for label in ("load", "warm load"):
        e = json.loads(subprocess.run([py, "-c", est], env=env, capture_output=True, text=True, check=True).stdout)
        wall, rss, out = timed([py, "-c", load], env)
        inner = float(re.search(r"LOAD ([\d.]+)", out).group(1))
        rows.append((label, wall, inner, rss, e))
    e = json.loads(subprocess.run([py, "-c", est], env=env, capture_output=True, text=True, check=True).stdout)
    out_dir = work / "run"
    wall, rss, out = timed([py, "-m", "logitlab.cli", "run", "--model", str(folder), "--dtype", "bfloat16",
                            "--analyses", args.analyses, "--patching-pairs", "0", "--no-report", "--force",
                            "--out", str(out_dir)], env)
    rows.append(("run", wall, None, rss, e))
    print(f"params {e['n_params'] / 1e9:.3f} B ({e['runner_params'] / 1e9:.3f} B held), bfloat16, CPU")
    for label, wall, inner, rss, e in rows:
        what = f"load_model {inner:.1f} s, " if inner is not None else ""
        print(f"{label:10s} wall {wall:6.1f} s ({what}process start included), peak RSS {rss:5.2f} GiB, "
              f"estimate {e['host'] / 2**30:5.2f} GiB ({'cold' if e['cold_load'] else 'warm'})")
    print(out.strip().splitlines()[-1] if out.strip() else "")


if __name__ == "__main__":
    main()
