"""A small causal decoder (GPT-style) as a :class:`~sapo_lightning.policies.Policy`.

Kept apart from ``policies.py``, which holds the interface every policy imports: the
network's attention, blocks and KV cache are most of this file.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from sapo_lightning.checks import check_int, check_number, check_positive, fail
from sapo_lightning.policies import Policy, check_token_queries, decode, token_scores
from sapo_lightning.rollout import Rollout, Scores
from sapo_lightning.tasks import Task


class KVCache:
    """Keys and values of every layer for the positions read so far, preallocated to ``max_len``."""

    def __init__(self, n_layer: int, n: int, n_head: int, max_len: int, head_dim: int, like: Tensor) -> None:
        shape = (n_layer, n, n_head, max_len, head_dim)
        self.keys = like.new_zeros(shape)  # [L, N, H, S_max, Dh]
        self.values = like.new_zeros(shape)  # [L, N, H, S_max, Dh]
        self.length = 0  # positions filled


class SelfAttention(nn.Module):
    def __init__(self, d_model: int, n_head: int, dropout: float) -> None:
        super().__init__()
        self.n_head = n_head
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.dropout = dropout

    def forward(self, x: Tensor, cache: KVCache | None, layer: int) -> Tensor:
        n, s, c = x.shape  # [N, S, C]
        q, k, v = self.qkv(x).view(n, s, 3, self.n_head, c // self.n_head).permute(2, 0, 3, 1, 4)  # [N, H, S, Dh] each
        causal = True
        if cache is not None:
            start = cache.length
            cache.keys[layer, :, :, start : start + s] = k
            cache.values[layer, :, :, start : start + s] = v
            k = cache.keys[layer, :, :, : start + s]  # [N, H, start + S, Dh]
            v = cache.values[layer, :, :, : start + s]
            if start > 0:  # new tokens after a filled cache: one token at a time sees everything before it
                if s != 1:
                    raise ValueError("a filled KV cache takes one new token at a time")
                causal = False
        dropout = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=causal)  # [N, H, S, Dh]
        return self.proj(y.transpose(1, 2).reshape(n, s, c))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, d_model: int, n_head: int, dropout: float) -> None:
        super().__init__()
        self.ln_attn = nn.LayerNorm(d_model)
        self.attn = SelfAttention(d_model, n_head, dropout)
        self.ln_mlp = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model), nn.Dropout(dropout)
        )

    def forward(self, x: Tensor, cache: KVCache | None, layer: int) -> Tensor:
        x = x + self.attn(self.ln_attn(x), cache, layer)
        return x + self.mlp(self.ln_mlp(x))


class TransformerPolicy(Policy):
    """A causal decoder that reads the query tokens as a prompt and writes the response after it.

    The sequence is ``query ⧺ response`` (D + T tokens, learned positions). ``sample`` decodes
    token by token from softmax(logits / temperature), reusing each layer's keys and values
    (KV cache) or, with ``use_kv_cache=False``, recomputing the whole prefix at every step;
    both read the same uniforms from the generator and so draw the same tokens. A response
    ends at the task's EOS token (its mask covers the EOS) or after T = ``task.response_len``
    (max_new_tokens) tokens. ``score`` computes every response token's log-prob in one
    forward pass under the same temperature, so ratios against sampled log-probs are exact.
    The output head shares the token embedding's weights.

    Args:
        task: Token-query task; sets the vocabulary V, prompt length D, max_new_tokens and EOS.
        n_layer: Transformer blocks (>= 1).
        n_head: Attention heads; must divide d_model.
        d_model: Width of the residual stream.
        temperature: Sampling temperature (> 0); log-probs are those of the tempered softmax.
        dropout: Dropout rate in [0, 1) on attention and MLP outputs (training mode only).
        use_kv_cache: Reuse keys/values while sampling (True) or recompute every step (False);
            same tokens either way, the cache is faster.
        gradient_checkpointing: In a forward pass that needs gradients, keep only each block's
            input and recompute its activations in backward: less memory, one more forward.
    """

    def __init__(
        self,
        task: Task,
        n_layer: int = 2,
        n_head: int = 2,
        d_model: int = 64,
        temperature: float = 1.0,
        dropout: float = 0.0,
        use_kv_cache: bool = True,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        check_token_queries("TransformerPolicy", task)
        for name, value in (("n_layer", n_layer), ("n_head", n_head), ("d_model", d_model)):
            check_int(name, value, 1)
        if d_model % n_head:
            fail("d_model", f"a multiple of n_head={n_head}", d_model)
        check_number("dropout", dropout, 0, 1, high_open=True)
        self.temperature = check_positive("temperature", temperature)
        self.use_kv_cache = use_kv_cache
        self.gradient_checkpointing = gradient_checkpointing
        self.n_head = n_head
        self.query_len = task.query_dim
        self.max_new_tokens = task.response_len
        self.eos_token = task.eos_token
        self.pad_token = 0 if task.eos_token is None else task.eos_token  # decode's fill after EOS
        self.embed = nn.Embedding(task.vocab_size, d_model)
        self.position = nn.Embedding(task.query_dim + task.response_len, d_model)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(d_model, n_head, dropout) for _ in range(n_layer))
        self.ln_out = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, task.vocab_size, bias=False)
        self.head.weight = self.embed.weight
        self.apply(_init_weights)

    def forward(self, tokens: Tensor, cache: KVCache | None = None) -> Tensor:
        """Final hidden states ``[N, S, C]`` of ``tokens`` ``[N, S]`` placed after the cache's positions."""
        start = cache.length if cache is not None else 0
        positions = torch.arange(start, start + tokens.shape[1], device=tokens.device)
        x = self.drop(self.embed(tokens) + self.position(positions))  # [N, S, C]
        recompute = self.gradient_checkpointing and cache is None and torch.is_grad_enabled()
        for layer, block in enumerate(self.blocks):
            x = checkpoint(block, x, None, layer, use_reentrant=False) if recompute else block(x, cache, layer)
        if cache is not None:
            cache.length += tokens.shape[1]
        return self.ln_out(x)

    def sample(self, queries: Tensor, generator: torch.Generator | None = None, greedy: bool = False) -> Rollout:
        n = queries.shape[0]
        if self.use_kv_cache:
            d_model = self.embed.embedding_dim
            cache = KVCache(len(self.blocks), n, self.n_head, self.position.num_embeddings, d_model // self.n_head,
                            self.embed.weight)

            def next_logits(tokens: Tensor | None) -> Tensor:
                new = queries if tokens is None else tokens.unsqueeze(-1)  # [N, S]
                return self.head(self(new, cache)[:, -1]) / self.temperature  # [N, V]

        else:
            prefix = [queries]

            def next_logits(tokens: Tensor | None) -> Tensor:
                if tokens is not None:
                    prefix.append(tokens.unsqueeze(-1))
                return self.head(self(torch.cat(prefix, 1))[:, -1]) / self.temperature  # [N, V]

        stops = [] if self.eos_token is None else [self.eos_token]
        return decode(next_logits, n, self.max_new_tokens, stops, self.pad_token, generator, greedy, queries.device)

    def score(self, queries: Tensor, responses: Tensor, entropy_grad: bool = False,
              attention: Tensor | None = None) -> Scores:
        tokens = torch.cat([queries, responses[:, :-1]], 1)  # [N, D + T - 1]: the last token predicts nothing
        hidden = self(tokens)[:, self.query_len - 1 :]  # [N, T, C]: the states that predict y_1 .. y_T
        return token_scores(self.head(hidden) / self.temperature, responses, entropy_grad)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
