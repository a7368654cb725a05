"""Build a tiny random-weight Magistral-shaped model for CPU tests: nothing is downloaded.

    python -m deployments.tiny_model OUT_DIR

Writes Mistral format like the real Magistral repo (params.json, consolidated.safetensors,
tekken.json, SYSTEM_PROMPT.txt) plus a config.json, which ray.serve.llm reads with AutoConfig.
The tokenizer is mistral-common's bundled Tekken vocabulary (131 072 tokens) relabelled as
version v11, Magistral 2506's tokenizer version: vLLM's mistral reasoning parser only splits
`<think>` for v11+ Tekken. head_dim is 64: the CPU attention kernel rejects 16. Random weights
write random text; tests check shapes and counts, not words.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

HIDDEN, LAYERS, HEADS, KV_HEADS, HEAD_DIM, INTER = 128, 2, 2, 1, 64, 256
VOCAB, MAX_POS, ROPE_THETA, EPS = 131_072, 40_960, 1_000_000_000.0, 1e-5
FILES = ("params.json", "consolidated.safetensors", "config.json", "tekken.json", "SYSTEM_PROMPT.txt")
TINY_SYSTEM_PROMPT = "You are a tiny test model. Think first, inside <think> tags, then answer."

# HF parameter names -> Mistral consolidated names.
_TOP = {"model.embed_tokens.weight": "tok_embeddings.weight", "model.norm.weight": "norm.weight",
        "lm_head.weight": "output.weight"}
_LAYER = {"self_attn.q_proj": "attention.wq", "self_attn.k_proj": "attention.wk",
          "self_attn.v_proj": "attention.wv", "self_attn.o_proj": "attention.wo",
          "mlp.gate_proj": "feed_forward.w1", "mlp.down_proj": "feed_forward.w2",
          "mlp.up_proj": "feed_forward.w3", "input_layernorm": "attention_norm",
          "post_attention_layernorm": "ffn_norm"}
# v11 lists its 1 000 control tokens explicitly; these two ranks carry names the v11 template uses.
_NAMED_SPECIALS = {32: "[ARGS]", 33: "[CALL_ID]"}


def write_v11_tekken(out: Path) -> None:
    from mistral_common.tokens.tokenizers.tekken import Tekkenizer

    from common.tokens import bundled_tekken_path

    data = json.loads(Path(bundled_tekken_path()).read_text())
    data["config"]["version"] = "v11"
    n_special = data["config"]["default_num_special_tokens"]
    specials = [{"rank": t["rank"], "token_str": str(getattr(t["token_str"], "value", t["token_str"])), "is_control": True}
                for t in Tekkenizer.DEPRECATED_SPECIAL_TOKENS]
    specials += [{"rank": r, "token_str": _NAMED_SPECIALS.get(r, f"<SPECIAL_{r}>"), "is_control": True}
                 for r in range(len(specials), n_special)]
    data["special_tokens"] = specials
    (out / "tekken.json").write_text(json.dumps(data))


def write_weights(out: Path, seed: int) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(seed)
    cfg = MistralConfig(
        hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
        head_dim=HEAD_DIM, intermediate_size=INTER, vocab_size=VOCAB, max_position_embeddings=MAX_POS,
        rope_theta=ROPE_THETA, rms_norm_eps=EPS, sliding_window=None, tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2, dtype="bfloat16", architectures=["MistralForCausalLM"],
    )
    model = MistralForCausalLM(cfg).to(torch.bfloat16)
    cfg.save_pretrained(out)
    weights = {}
    for name, tensor in model.state_dict().items():
        if name in _TOP:
            weights[_TOP[name]] = tensor.contiguous()
            continue
        _, _, layer, rest = name.split(".", 3)  # model.layers.{i}.{module}.{leaf}
        module, leaf = rest.rsplit(".", 1)
        weights[f"layers.{layer}.{_LAYER[module]}.{leaf}"] = tensor.contiguous()
    save_file(weights, out / "consolidated.safetensors")
    params = {"dim": HIDDEN, "n_layers": LAYERS, "head_dim": HEAD_DIM, "hidden_dim": INTER, "n_heads": HEADS,
              "n_kv_heads": KV_HEADS, "rope_theta": ROPE_THETA, "norm_eps": EPS, "vocab_size": VOCAB,
              "max_position_embeddings": MAX_POS}
    (out / "params.json").write_text(json.dumps(params, indent=2))


def build(out_dir: str, seed: int = 0) -> Path:
    """Build the model into out_dir unless a complete one is already there."""
    out = Path(out_dir)
    if all((out / f).exists() for f in FILES):
        return out
    tmp = out.with_name(out.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    write_weights(tmp, seed)
    write_v11_tekken(tmp)
    (tmp / "SYSTEM_PROMPT.txt").write_text(TINY_SYSTEM_PROMPT)
    if out.exists():
        import shutil

        shutil.rmtree(out)
    os.replace(tmp, out)  # appears whole or not at all
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deployments.tiny_model", description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(f"building tiny Magistral-shaped model in {args.out_dir} ...", flush=True)
    print(f"ready: {build(args.out_dir, args.seed)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
