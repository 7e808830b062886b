"""nomic-bert for transformers' native `nomic_bert` directories, for transformers versions without that model
type: raylib's export copies this file into the model directory as modeling_nomic_bert.py and config.json's
auto_map points here, so `AutoModel.from_pretrained(dir, trust_remote_code=True)` opens it. Plain PyTorch; it
never imports raylib. Config keys are the native ones; parameter names are those transformers' save_pretrained
writes (it reverts its own names to nomic's: emb_ln, encoder.layers.N.attn.Wqkv, mlp.fc11/fc12/fc2, norm1/norm2).

Post-norm blocks, rotary positions (halves rotated) and, with rope_type `dynamic`, each sequence's rotary base
NTK-scaled by its own length past max_position_embeddings (the trained length).
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput

ACTIVATIONS = {"silu": F.silu, "gelu": F.gelu}


class NomicBertConfig(PretrainedConfig):
    model_type = "nomic_bert"

    def __init__(self, vocab_size=30528, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072, hidden_act="silu", max_position_embeddings=2048, type_vocab_size=2,
                 layer_norm_eps=1e-12, initializer_range=0.02, pad_token_id=0, rope_parameters=None, **kwargs):
        self.vocab_size, self.hidden_size, self.intermediate_size = vocab_size, hidden_size, intermediate_size
        self.num_hidden_layers, self.num_attention_heads = num_hidden_layers, num_attention_heads
        self.hidden_act, self.max_position_embeddings, self.type_vocab_size = hidden_act, max_position_embeddings, type_vocab_size
        self.layer_norm_eps, self.initializer_range = layer_norm_eps, initializer_range
        self.rope_parameters = rope_parameters or {"rope_type": "default", "rope_theta": 1000.0}
        super().__init__(pad_token_id=pad_token_id, **kwargs)


class NomicBertEmbeddings(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)

    def forward(self, input_ids, token_type_ids):
        return self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)


class NomicBertAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.heads = config.num_attention_heads
        self.Wqkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=False)  # q_proj, k_proj, v_proj
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)  # o_proj

    def forward(self, x, mask, cos, sin):
        q, k, v = self.Wqkv(x).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4)  # (batch, heads, seq, dim)
        out = F.scaled_dot_product_attention(rotate(q, cos, sin), rotate(k, cos, sin), v, attn_mask=mask)
        return self.out_proj(out.transpose(1, 2).flatten(-2))


class NomicBertMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.fc11 = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)  # up_proj
        self.fc12 = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)  # gate_proj
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)  # down_proj
        self.act = ACTIVATIONS[config.hidden_act]

    def forward(self, x):
        return self.fc2(self.fc11(x) * self.act(self.fc12(x)))


class NomicBertLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.attn = NomicBertAttention(config)
        self.mlp = NomicBertMLP(config)
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)  # post_attention_layernorm
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)  # post_mlp_layernorm

    def forward(self, x, mask, cos, sin):
        x = self.norm1(x + self.attn(x, mask, cos, sin))
        return self.norm2(x + self.mlp(x))


def rotate(x, cos, sin):
    """x (batch, heads, seq, dim) rotated by cos/sin (batch, seq, dim), halves rotated."""
    first, second = x.chunk(2, dim=-1)
    return x * cos[:, None] + torch.cat((-second, first), dim=-1) * sin[:, None]


class NomicBertPreTrainedModel(PreTrainedModel):
    config_class = NomicBertConfig
    base_model_prefix = "nomic_bert"

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(0.0, self.config.initializer_range)


class NomicBertModel(NomicBertPreTrainedModel):
    """The encoder; last_hidden_state is (batch, seq, hidden_size)."""

    def __init__(self, config):
        super().__init__(config)
        self.embeddings = NomicBertEmbeddings(config)
        self.emb_ln = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)  # embeddings.LayerNorm
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList(NomicBertLayer(config) for _ in range(config.num_hidden_layers))
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def rotary(self, lengths, seq_len, dtype):
        """cos/sin (batch, seq, head_dim), each row's base NTK-scaled by its own length when rope is dynamic."""
        rope, trained = self.config.rope_parameters, self.config.max_position_embeddings
        dim = self.config.hidden_size // self.config.num_attention_heads
        base = torch.full(lengths.shape, float(rope["rope_theta"]), dtype=torch.float64, device=lengths.device)
        if rope["rope_type"] == "dynamic":
            factor, scaled = rope["factor"], lengths.double()
            stretched = base * (factor * scaled / trained - (factor - 1)) ** (dim / (dim - 2))
            base = torch.where(lengths > trained, stretched, base)
        exponents = torch.arange(0, dim, 2, device=lengths.device, dtype=torch.float32) / dim
        inv_freq = (1.0 / base[:, None] ** exponents).float()
        angles = torch.arange(seq_len, device=lengths.device, dtype=torch.float32)[None, :, None] * inv_freq[:, None]
        angles = torch.cat((angles, angles), dim=-1)
        return angles.cos().to(dtype), angles.sin().to(dtype)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, **kwargs):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.emb_ln(self.embeddings(input_ids, token_type_ids))
        cos, sin = self.rotary(attention_mask.sum(dim=1), input_ids.shape[1], x.dtype)
        mask = attention_mask.bool()[:, None, None, :]
        for layer in self.encoder.layers:
            x = layer(x, mask, cos, sin)
        return BaseModelOutput(last_hidden_state=x)
