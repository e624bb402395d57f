"""Tiny random models of every supported architecture kind, saved as HF folders and loaded like real ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

WORDS = ("Mary John Dan Amy Sarah Tom she he it is a an great friend amazing person fantastic colleague "
         "wonderful partner excellent student really tall isn ’ t , . the car").split()

KINDS = ("gpt2", "llama_mha", "llama_gqa", "mistral", "qwen2", "qwen3", "gemma3", "neox")
KINDS += ("gemma2_softcap",)  # Gemma-2 with both soft-caps biting (staged path; "gemma2" below is the fallback's)
KINDS += ("olmo2",)  # post-norms only, query/key norms over all heads
KINDS += ("phi3",)  # fused projections, partial rotary with longrope past the original context, sliding window
KINDS += ("granite",)  # embedding, attention, residual and logit multipliers
KINDS += ("qwen3_moe",)  # mixture of experts: 4 experts, top-2 renormalised, one dense layer
KINDS += ("gpt_oss",)  # attention sinks, biases, alternating sliding windows, yarn; 4 experts top-2, clamped SwiGLU
MOE_KINDS = ("qwen3_moe", "gpt_oss")  # the mixtures of experts among KINDS


def make_tokenizer(folder: Path):  # noqa: ANN201
    """A small byte-level BPE trained offline on the task's words; ' she', ' he' and names are single tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [" ".join(WORDS)] * 50 + [f"{w} is {w}, isn’t she he it" for w in WORDS] * 20 + [f" {w}" for w in WORDS] * 50
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<bos>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", pad_token="<pad>")
    fast.save_pretrained(str(folder))
    return fast


def make_config(kind: str, vocab: int):  # noqa: ANN201
    from transformers import GPT2Config, Gemma3TextConfig, GPTNeoXConfig, LlamaConfig, Qwen2Config, Qwen3Config
    if kind == "gpt2":
        return GPT2Config(vocab_size=vocab, n_positions=64, n_embd=64, n_layer=3, n_head=4, bos_token_id=0,
                          eos_token_id=0, architectures=["GPT2LMHeadModel"])
    if kind in ("llama_mha", "llama_gqa"):
        return LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                           num_attention_heads=4, num_key_value_heads=4 if kind == "llama_mha" else 2, head_dim=16,
                           max_position_embeddings=64, rms_norm_eps=1e-5, bos_token_id=0, pad_token_id=1,
                           tie_word_embeddings=False, architectures=["LlamaForCausalLM"])
    if kind == "mistral":
        # Llama layout with a sliding window shorter than the prompts.
        from transformers import MistralConfig
        return MistralConfig(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                             num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=8,
                             max_position_embeddings=64, bos_token_id=0, pad_token_id=1, tie_word_embeddings=False,
                             architectures=["MistralForCausalLM"])
    if kind == "qwen2":
        # Llama layout with biases on the query, key and value projections.
        return Qwen2Config(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                           bos_token_id=0, pad_token_id=1, tie_word_embeddings=False, architectures=["Qwen2ForCausalLM"])
    if kind == "qwen3":
        # Llama layout plus per-head RMSNorm on queries and keys.
        return Qwen3Config(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=64,
                           bos_token_id=0, pad_token_id=1, tie_word_embeddings=False, architectures=["Qwen3ForCausalLM"])
    if kind == "gemma3":
        # A sliding window shorter than the prompts, so the window mask is exercised.
        return Gemma3TextConfig(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                                num_attention_heads=4, num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16,
                                sliding_window=4, layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                                max_position_embeddings=64, bos_token_id=0, pad_token_id=1,
                                architectures=["Gemma3ForCausalLM"])
    if kind == "opt":
        # Not one of logitlab's own architectures: exercises the TransformerBridge-hook fallback.
        from transformers import OPTConfig
        return OPTConfig(vocab_size=vocab, hidden_size=64, ffn_dim=128, num_hidden_layers=3, num_attention_heads=4,
                         word_embed_proj_dim=64, max_position_embeddings=64, bos_token_id=0, pad_token_id=1,
                         eos_token_id=0, architectures=["OPTForCausalLM"])
    if kind == "gemma2":
        # Final logit soft-capping: the fallback must refuse it (attributions would not add up).
        from transformers import Gemma2Config
        return Gemma2Config(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16,
                            final_logit_softcapping=1.0, max_position_embeddings=64, bos_token_id=0, pad_token_id=1,
                            architectures=["Gemma2ForCausalLM"])
    if kind == "neox":
        # Pythia's layout: parallel attention and MLP, rotary on a quarter of each head, biases everywhere.
        return GPTNeoXConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                             num_attention_heads=4, max_position_embeddings=64, bos_token_id=0, eos_token_id=0,
                             pad_token_id=1, use_parallel_residual=True,
                             rope_parameters={"rope_theta": 10000.0, "partial_rotary_factor": 0.25, "rope_type": "default"},
                             architectures=["GPTNeoXForCausalLM"])
    if kind == "gemma2_softcap":
        # Gemma-2 on logitlab's own forward pass: attention scores (~10) and logits (~3) both well into their caps,
        # alternating sliding windows shorter than the prompts, grouped KV heads.
        from transformers import Gemma2Config
        return Gemma2Config(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                            num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16,
                            attn_logit_softcapping=5.0, final_logit_softcapping=3.0, sliding_window=4,
                            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                            max_position_embeddings=64, bos_token_id=0, pad_token_id=1, architectures=["Gemma2ForCausalLM"])
    if kind == "olmo2":
        # OLMo-2: norms after attention and MLP only, RMSNorm over all heads' queries (keys) together, grouped KV
        # heads. No attention biases (as the released checkpoints; TransformerLens 4.3 cannot fold grouped value
        # biases of this layout).
        from transformers import Olmo2Config
        return Olmo2Config(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                           bos_token_id=0, pad_token_id=1, eos_token_id=0,
                           tie_word_embeddings=False, architectures=["Olmo2ForCausalLM"])
    if kind == "phi3":
        # Phi-3: fused qkv and gate-up projections, grouped KV heads, rotary on half of each head with longrope
        # scaling (original context 8: the tiny task's prompts run past it, so the long factors are used), and a
        # sliding window shorter than the prompts. Sizes chosen so the answer depends on the subject (patching
        # pairs' clean − corrupted gaps ≈ 1.6).
        from transformers import Phi3Config
        half = 4  # rotated dims / 2 = head_dim · partial / 2
        return Phi3Config(vocab_size=vocab, hidden_size=64, intermediate_size=80, num_hidden_layers=3,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                          original_max_position_embeddings=8, sliding_window=8,
                          rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.5,
                                           "short_factor": [1.0 + 0.1 * i for i in range(half)],
                                           "long_factor": [1.0 + 1.5 * i for i in range(half)],
                                           "original_max_position_embeddings": 8},
                          bos_token_id=0, pad_token_id=1, eos_token_id=0, tie_word_embeddings=False,
                          architectures=["Phi3ForCausalLM"])
    if kind == "granite":
        # Granite: every multiplier away from its neutral value (the real 3.x models: embedding 12, attention
        # 1/128 or 1/64, residual 0.22, logits 8 or 16), grouped KV heads; values chosen so the answer depends
        # on the subject (patching pairs' gaps ≈ −1.8: a large embedding multiplier drowns the subject's signal).
        from transformers import GraniteConfig
        return GraniteConfig(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                             embedding_multiplier=1.5, attention_multiplier=0.125, residual_multiplier=0.4,
                             logits_scaling=2.0, bos_token_id=0, pad_token_id=1, eos_token_id=0,
                             tie_word_embeddings=False, architectures=["GraniteForCausalLM"])
    if kind == "qwen3_moe":
        # Qwen3-MoE: sparse blocks of 4 experts (top 2, weights renormalised, as the released checkpoints) in
        # layers 0 and 2, a dense MLP in layer 1 (mlp_only_layers), per-head query/key norms, grouped KV heads.
        from transformers import Qwen3MoeConfig
        return Qwen3MoeConfig(vocab_size=vocab, hidden_size=64, intermediate_size=96, moe_intermediate_size=32,
                              num_experts=4, num_experts_per_tok=2, norm_topk_prob=True, mlp_only_layers=[1],
                              num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                              max_position_embeddings=64, bos_token_id=0, pad_token_id=1, eos_token_id=0,
                              tie_word_embeddings=False, architectures=["Qwen3MoeForCausalLM"])
    if kind == "olmoe":
        # OLMoE: every layer sparse (4 experts, top 2, weights not renormalised), query/key RMSNorm over all heads.
        from transformers import OlmoeConfig
        return OlmoeConfig(vocab_size=vocab, hidden_size=64, intermediate_size=32, num_experts=4,
                           num_experts_per_tok=2, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                           max_position_embeddings=64, bos_token_id=0, pad_token_id=1, eos_token_id=0,
                           tie_word_embeddings=False, architectures=["OlmoeForCausalLM"])
    if kind == "mixtral":
        # Mixtral: the Mistral layout (sliding window shorter than the prompts), 4 experts, top 2 renormalised.
        from transformers import MixtralConfig
        return MixtralConfig(vocab_size=vocab, hidden_size=64, intermediate_size=32, num_local_experts=4,
                             num_experts_per_tok=2, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                             head_dim=16, sliding_window=8, max_position_embeddings=64, bos_token_id=0, pad_token_id=1,
                             eos_token_id=0, tie_word_embeddings=False, architectures=["MixtralForCausalLM"])
    if kind == "gpt_oss":
        # gpt-oss: a learned sink logit per head (scaled in make_model_folder so that it bites), biases on the
        # query, key, value and output projections, a sliding window shorter than the prompts on layer 0 and full
        # attention on layer 1, yarn rotary past its original context (factor 4), 4 experts (top 2, softmax over
        # the two kept logits) with biases and a SwiGLU whose clamps bite on some units.
        from transformers import GptOssConfig
        return GptOssConfig(vocab_size=vocab, hidden_size=64, intermediate_size=32, num_local_experts=4,
                            num_experts_per_tok=2, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                            head_dim=16, sliding_window=4, layer_types=["sliding_attention", "full_attention"],
                            max_position_embeddings=32, swiglu_limit=GPT_OSS_LIMIT, swiglu_alpha=1.702,
                            rope_parameters={"rope_type": "yarn", "rope_theta": 150000.0, "factor": 4.0,
                                             "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False,
                                             "original_max_position_embeddings": 8},
                            bos_token_id=0, pad_token_id=1, eos_token_id=0, tie_word_embeddings=False,
                            architectures=["GptOssForCausalLM"])
    raise ValueError(kind)


GPT_OSS_LIMIT = 2.75  # the tiny gpt-oss's swiglu_limit: the clamps bite on ~14% of units, none near the kink
GPT_OSS_SINK_SCALE = 2.0  # its sink logits' spread, comparable to its attention scores


def make_model_folder(kind: str, folder: Path, seed: int = 0) -> Path:
    """Save a random model of ``kind`` with randomised norm weights/biases (so folding bugs show)."""
    from transformers import AutoModelForCausalLM
    folder.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer(folder)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(make_config(kind, len(tok)))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or ".ln_" in name or name.endswith("ln_f.weight") or name.endswith("ln_f.bias"):
                if name.endswith("bias"):
                    p.copy_(torch.randn_like(p) * 0.3)
                else:
                    p.copy_(1.0 + torch.randn_like(p) * 0.3 if kind != "gemma3" else torch.randn_like(p) * 0.3)
            elif name.endswith("self_attn.sinks"):  # learned sink logits as large as the scores
                p.copy_(torch.randn_like(p) * GPT_OSS_SINK_SCALE)
            elif "bias" in name:
                p.copy_(torch.randn_like(p) * 0.1)
            else:
                p.copy_(torch.randn_like(p) * 0.2)
    _answers_follow_the_subject(model, tok)
    model.save_pretrained(str(folder), safe_serialization=True)
    return folder


ANSWER_LOGIT_DIFF = 3.0  # the tiny task's mean logit difference per class after the tweak below


def _answers_follow_the_subject(model, tok) -> None:  # noqa: ANN001
    """Rewrite the unembedding rows of the tiny task's two answers so that the answer depends on the subject.

    A random model's " she" − " he" logit difference barely depends on the subject (its clean − corrupted gaps
    were 0.1–0.9 logit on several kinds, below patching's 1-logit threshold). Here the two rows become
    a ± c·v: a is their old mean (every other logit unchanged), v the direction in which the final-norm output
    at the last position of the task's "she" prompts differs from its "he" prompts, with the mean over all
    prompts projected out (so that both classes score their own answer on average: mean logit difference
    ``ANSWER_LOGIT_DIFF`` per class). The prompts never contain the answers, so the rows' role as input
    embeddings of tied models changes nothing the task runs; only the final read-out of the two answers moves.
    """
    import yaml
    task = yaml.safe_load(TASK_YAML)
    answer = {c: tok(v["answer"], add_special_tokens=False)["input_ids"] for c, v in task["classes"].items()}
    assert sorted(answer) == ["he", "she"] and all(len(ids) == 1 for ids in answer.values()), answer
    seen: list[torch.Tensor] = []
    head = model.get_output_embeddings()
    hook = head.register_forward_hook(lambda _m, args, _out: seen.append(args[0][0, -1].detach()))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for template in task["templates"]:
                for s in task["subjects"]:
                    ids = [tok.bos_token_id] + tok(template.format(s["name"]), add_special_tokens=False)["input_ids"]
                    model(torch.tensor([ids]))
    finally:
        hook.remove()
        model.train(was_training)
    h = torch.stack(seen).double()  # (prompt, d_model), template-major
    she = torch.tensor([s["class"] == "she" for s in task["subjects"]] * len(task["templates"]))
    mean = h.mean(0)
    d = h[she].mean(0) - h[~she].mean(0)
    v = d - (d @ mean) / (mean @ mean) * mean  # orthogonal to the mean: no shift shared by both classes
    # Balanced classes: each class's mean projection on v is ±|v|²/2, so the logit difference 2c·h·v/|v| has
    # mean c·|v| for each class's own answer.
    step = (ANSWER_LOGIT_DIFF / v.norm() * v / v.norm()).to(head.weight.dtype)
    with torch.no_grad():
        w = head.weight
        a = (w[answer["she"][0]] + w[answer["he"][0]]) / 2
        w[answer["she"][0]] = a + step
        w[answer["he"][0]] = a - step


TASK_YAML = """
name: tiny-pronouns
prepend_bos: true
templates:
  - "{} is a great friend, isn’t"
  - "{} is really tall, isn’t"
classes:
  she: {answer: " she", incorrect: [" he"]}
  he: {answer: " he", incorrect: [" she"]}
subjects:
  - {name: Mary, class: she}
  - {name: John, class: he}
  - {name: Amy, class: she}
  - {name: "The car", class: he}
patching:
  - {clean: "Mary is a great friend, isn’t", corrupted: "John is a great friend, isn’t", class: she}
  - {clean: "Amy is a great friend, isn’t", corrupted: "John is a great friend, isn’t", class: she}
"""


def random_dictionaries(d_model: int, n_layers: int, variant: str, seed: int = 0, n_features: int = 48) -> Any:
    """Random transcoders (a logitlab.features DictionarySet) whose features are active on about a third of
    positions; ``variant``: relu, jumprelu or topk, with ``_skip`` for a skip connection."""
    from logitlab.features.dictionary import DictionarySet, Transcoder
    g = torch.Generator().manual_seed(seed)
    act = variant.split("_")[0]
    layers = []
    for _ in range(n_layers):
        W_enc = torch.randn(d_model, n_features, generator=g) / d_model ** 0.5
        layers.append(Transcoder(
            W_enc=W_enc, b_enc=torch.randn(n_features, generator=g) * 0.3 - 0.2,
            W_dec=torch.randn(n_features, d_model, generator=g) * 0.1, b_dec=torch.randn(d_model, generator=g) * 0.05,
            activation=act, threshold=torch.rand(n_features, generator=g) * 0.3 if act == "jumprelu" else None,
            k=6 if act == "topk" else None,
            W_skip=torch.randn(d_model, d_model, generator=g) * 0.05 if variant.endswith("_skip") else None))
    return DictionarySet(layers=tuple(layers), d_model=d_model)
