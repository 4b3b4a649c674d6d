"""A tiny random Llama written as a GGUF file, with a byte-level tokenizer and a chat template, for tests.

transformers reads it back as the same model (``write_llama_gguf`` returns it to compare logits).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.convert_slow_tokenizer import bytes_to_unicode

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def write_llama_gguf(path: Path, architecture: str = "llama", chat_template: bool = True) -> LlamaForCausalLM:
    """Write a 2-layer Llama (float32 tensors) to ``path``; ``architecture`` names another in the header."""
    import gguf

    tokens = list(bytes_to_unicode().values()) + SPECIAL
    vocab, hidden, heads, kv_heads, layers = len(tokens), 32, 4, 2, 2
    eos = vocab - 1
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=128,
                         tie_word_embeddings=True, bos_token_id=vocab - 2, eos_token_id=eos, pad_token_id=eos)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    state = {name: value.numpy() for name, value in model.state_dict().items()}

    def rotary(weight, n):  # transformers' q/k layout -> llama.cpp's (transformers undoes it on load)
        return weight.reshape(n, 2, weight.shape[0] // n // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)

    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_name("tiny")
    writer.add_context_length(128)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(64)
    writer.add_block_count(layers)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_vocab_size(vocab)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * (vocab - len(SPECIAL)) + [3] * len(SPECIAL))
    writer.add_token_scores([0.0] * vocab)
    writer.add_token_merges([])
    writer.add_bos_token_id(vocab - 2)
    writer.add_eos_token_id(eos)
    writer.add_pad_token_id(eos)
    if chat_template:
        writer.add_chat_template(CHAT_TEMPLATE)
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    for i in range(layers):
        layer, block = f"model.layers.{i}.", f"blk.{i}."
        writer.add_tensor(block + "attn_norm.weight", state[layer + "input_layernorm.weight"])
        writer.add_tensor(block + "attn_q.weight", rotary(state[layer + "self_attn.q_proj.weight"], heads))
        writer.add_tensor(block + "attn_k.weight", rotary(state[layer + "self_attn.k_proj.weight"], kv_heads))
        writer.add_tensor(block + "attn_v.weight", state[layer + "self_attn.v_proj.weight"])
        writer.add_tensor(block + "attn_output.weight", state[layer + "self_attn.o_proj.weight"])
        writer.add_tensor(block + "ffn_norm.weight", state[layer + "post_attention_layernorm.weight"])
        writer.add_tensor(block + "ffn_gate.weight", state[layer + "mlp.gate_proj.weight"])
        writer.add_tensor(block + "ffn_up.weight", state[layer + "mlp.up_proj.weight"])
        writer.add_tensor(block + "ffn_down.weight", state[layer + "mlp.down_proj.weight"])
    writer.add_tensor("output_norm.weight", state["model.norm.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model
