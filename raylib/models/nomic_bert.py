"""nomic-bert for training: a long-context BERT (rotary positions with dynamic NTK scaling per sequence, SwiGLU,
no dropout, vocab padded to a multiple of 64) whose layers run on the real tokens only (flash-attn varlen or
`sdpa_unpadded`) and whose MLM head computes logits at the masked positions only.

Parameter names and config keys follow nomic's remote-code checkpoints (GPT-2 style keys: n_embd, n_head,
n_layer, n_inner, ...); dropout keys in those configs are accepted and ignored: this model has no dropout.
It is registered with the Auto classes under its own model_type, `raylib_nomic_bert`, never over transformers'
`nomic_bert`; nomic_layouts.py reads every published layout into it and writes transformers' native one.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    PreTrainedConfig,
    PreTrainedModel,
)
from transformers.modeling_outputs import BaseModelOutput, MaskedLMOutput

from raylib.models.attention import BACKENDS, Packing, attention, packed_attention, packed_kernel
from raylib.models.rotary import apply_rotary, ntk_base, rotary_tables

GATED_ACTIVATIONS = {"swiglu": F.silu, "geglu": F.gelu, "glu": torch.sigmoid}
PLAIN_ACTIVATIONS = {"gelu": F.gelu, "gelu_new": lambda x: F.gelu(x, approximate="tanh")}


@strict
class RaylibNomicBertConfig(PreTrainedConfig):
    """Config of nomic-bert; defaults are nomic-bert-2048's architecture. Its class name is not transformers'
    NomicBertConfig because the Auto classes map models by their config's class name."""

    model_type = "raylib_nomic_bert"
    attribute_map = {
        "hidden_size": "n_embd",
        "num_attention_heads": "n_head",
        "num_hidden_layers": "n_layer",
        "intermediate_size": "n_inner",
        "max_position_embeddings": "n_positions",
    }

    vocab_size: int = 30528
    n_embd: int = 768
    n_head: int = 12
    n_layer: int = 12
    n_inner: int | None = None  # None: 4 * n_embd
    n_positions: int = 8192  # the longest input accepted (dynamic NTK beyond max_trained_positions)
    activation_function: str = "swiglu"
    layer_norm_epsilon: float = 1e-12
    initializer_range: float = 0.02
    type_vocab_size: int = 2
    rotary_emb_fraction: float = 1.0  # 0: learned absolute positions instead of rotary
    rotary_emb_base: float | int = 1000
    rotary_scaling_factor: float | int | None = None  # dynamic NTK factor; None: plain rotary at every length
    max_trained_positions: int = 2048
    qkv_proj_bias: bool = False
    mlp_fc1_bias: bool = False
    mlp_fc2_bias: bool = False
    prenorm: bool = False
    pad_vocab_size_multiple: int = 64
    mlp_multiple_of: int = 256  # the gated MLP's width: n_inner rounded up to this (nomic's GatedMLP)
    causal: bool = False
    rotary_emb_interleaved: bool = False
    pad_token_id: int | None = 0
    tie_word_embeddings: bool = True
    attn_backend: str = "auto"  # auto | flash | sdpa | sdpa_unpadded (see raylib.models.attention)

    def __post_init__(self, **kwargs):
        if self.n_inner is None:
            self.n_inner = 4 * self.n_embd
        remainder = self.vocab_size % self.pad_vocab_size_multiple
        if remainder:
            self.vocab_size += self.pad_vocab_size_multiple - remainder
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Refuse settings this implementation does not have, naming the key."""
        problems = []
        if self.n_embd % self.n_head:
            problems.append(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.activation_function not in {**GATED_ACTIVATIONS, **PLAIN_ACTIVATIONS}:
            problems.append(f"activation_function {self.activation_function!r}: use one of "
                            f"{sorted({**GATED_ACTIVATIONS, **PLAIN_ACTIVATIONS})}")
        if self.causal:
            problems.append("causal: true is not supported (nomic-bert is bidirectional)")
        if self.rotary_emb_interleaved:
            problems.append("rotary_emb_interleaved: true is not supported")
        if getattr(self, "rotary_emb_scale_base", None) is not None:
            problems.append("rotary_emb_scale_base (xPos) is not supported; set it to null")
        if not 0 <= self.rotary_emb_fraction <= 1:
            problems.append(f"rotary_emb_fraction ({self.rotary_emb_fraction}) must be within [0, 1]")
        if self.mlp_multiple_of < 1:
            problems.append(f"mlp_multiple_of ({self.mlp_multiple_of}) must be at least 1")
        if self.attn_backend not in BACKENDS:
            problems.append(f"attn_backend {self.attn_backend!r}: use one of {', '.join(BACKENDS)}")
        if problems:
            raise ValueError("nomic_bert config: " + "; ".join(problems))

    @property
    def mlp_width(self) -> int:
        """The gated MLP's hidden width."""
        return -(-self.n_inner // self.mlp_multiple_of) * self.mlp_multiple_of

    @property
    def rotary_dim(self) -> int:
        return int(self.n_embd // self.n_head * self.rotary_emb_fraction)


NomicBertConfig = RaylibNomicBertConfig  # the name our jobs, tests and benchmarks import


class NomicBertEmbeddings(nn.Module):
    def __init__(self, config: NomicBertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.n_embd, padding_idx=config.pad_token_id)
        if config.type_vocab_size > 0:
            self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.n_embd)
        if config.rotary_dim == 0:
            self.position_embeddings = nn.Embedding(config.n_positions, config.n_embd)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
        embeddings = self.word_embeddings(input_ids)
        if hasattr(self, "token_type_embeddings"):
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)
            embeddings = embeddings + self.token_type_embeddings(token_type_ids)
        if hasattr(self, "position_embeddings"):
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)
            embeddings = embeddings + self.position_embeddings(positions)
        return embeddings


@dataclass(frozen=True)
class TokenLayout:
    """How a forward pass holds its tokens: padded (batch, seq) with `mask` (None: no padding), or packed rows
    (`packing`) whose attention runs `kernel`."""

    mask: torch.Tensor | None = None
    packing: Packing | None = None
    kernel: str | None = None


class NomicBertAttention(nn.Module):
    def __init__(self, config: NomicBertConfig):
        super().__init__()
        self.heads, self.head_dim = config.n_head, config.n_embd // config.n_head
        self.Wqkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.qkv_proj_bias)
        self.out_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.qkv_proj_bias)

    def forward(self, x: torch.Tensor, tokens: TokenLayout, rotary: tuple | None) -> torch.Tensor:
        """x is (batch, seq, n_embd), or (tokens, n_embd) when the layout is packed."""
        q, k, v = self.Wqkv(x).unflatten(-1, (3, self.heads, self.head_dim)).unbind(dim=-3)
        if rotary is not None:
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        if tokens.packing is None:
            out = attention(q, k, v, tokens.mask)
        else:
            out = packed_attention(q, k, v, tokens.packing, tokens.kernel)
        return self.out_proj(out.flatten(-2))


class NomicBertMLP(nn.Module):
    """SwiGLU (fc11 * act(fc12), n_inner rounded up to a multiple of mlp_multiple_of) or a plain two-layer MLP."""

    def __init__(self, config: NomicBertConfig):
        super().__init__()
        self.gated = config.activation_function in GATED_ACTIVATIONS
        if self.gated:
            self.activation = GATED_ACTIVATIONS[config.activation_function]
            width = config.mlp_width
            self.fc11 = nn.Linear(config.n_embd, width, bias=config.mlp_fc1_bias)
            self.fc12 = nn.Linear(config.n_embd, width, bias=config.mlp_fc1_bias)
        else:
            self.activation = PLAIN_ACTIVATIONS[config.activation_function]
            width = config.n_inner
            self.fc1 = nn.Linear(config.n_embd, width, bias=config.mlp_fc1_bias)
        self.fc2 = nn.Linear(width, config.n_embd, bias=config.mlp_fc2_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            return self.fc2(self.fc11(x) * self.activation(self.fc12(x)))
        return self.fc2(self.activation(self.fc1(x)))


class NomicBertBlock(nn.Module):
    def __init__(self, config: NomicBertConfig):
        super().__init__()
        self.prenorm = config.prenorm
        self.attn = NomicBertAttention(config)
        self.mlp = NomicBertMLP(config)
        self.norm1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.norm2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)

    def forward(self, x: torch.Tensor, tokens: TokenLayout, rotary: tuple | None,
                residual: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(output, residual stream). Post-norm: the stream is None. Pre-norm, as nomic's reference computes it: x
        is the previous block's MLP output, not yet added to the stream; the model's output is the last block's
        MLP output, never added to the stream."""
        if self.prenorm:
            residual = x if residual is None else x + residual
            residual = residual + self.attn(self.norm1(residual), tokens, rotary)
            return self.mlp(self.norm2(residual)), residual
        x = self.norm1(x + self.attn(x, tokens, rotary))
        return self.norm2(x + self.mlp(x)), None


class NomicBertEncoder(nn.Module):
    def __init__(self, config: NomicBertConfig):
        super().__init__()
        self.layers = nn.ModuleList(NomicBertBlock(config) for _ in range(config.n_layer))


class NomicBertPreTrainedModel(PreTrainedModel):
    config_class = NomicBertConfig
    base_model_prefix = "bert"
    _no_split_modules = ["NomicBertBlock"]
    _supports_sdpa = True

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """transformers' loader, but a checkpoint whose tensors do not match the model is an error listing them."""
        wants_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        problems = {kind: sorted(keys) for kind, keys in info.items()
                    if kind in ("missing_keys", "unexpected_keys", "mismatched_keys") and keys}
        if problems:
            listed = "; ".join(f"{kind}: {', '.join(map(str, keys))}" for kind, keys in problems.items())
            raise ValueError(f"{cls.__name__}: checkpoint does not match the config ({listed})")
        return (model, info) if wants_info else model


class NomicBertModel(NomicBertPreTrainedModel):
    """The encoder; last_hidden_state is (batch, seq, n_embd)."""

    _keys_to_ignore_on_load_unexpected = [r"^cls\.", r"pooler\."]

    def __init__(self, config: NomicBertConfig):
        super().__init__(config)
        self.embeddings = NomicBertEmbeddings(config)
        self.emb_ln = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.encoder = NomicBertEncoder(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.word_embeddings = value

    def rotary(self, mask: torch.Tensor | None, seq_len: int, device) -> tuple[torch.Tensor, torch.Tensor] | None:
        """cos/sin tables for a batch padded to seq_len (`mask`: its real tokens, None: no padding): (seq, dim)
        when no sequence is longer than max_trained_positions (or NTK scaling is off), else (batch, seq, dim)
        with each row's base NTK-scaled by its own length, so that a text's vector never depends on the batch it
        came in."""
        config = self.config
        if config.rotary_dim == 0:
            return None

        def tables(length: int) -> tuple[torch.Tensor, torch.Tensor]:
            base = ntk_base(config.rotary_emb_base, config.rotary_dim, length, config.max_trained_positions,
                            config.rotary_scaling_factor)
            return rotary_tables(config.rotary_dim, seq_len, base, device)

        if not config.rotary_scaling_factor or seq_len <= config.max_trained_positions or mask is None:
            return tables(seq_len)
        lengths = mask.sum(dim=1).tolist()
        by_length = {length: tables(length) for length in set(lengths)}
        return tuple(torch.stack([by_length[length][i] for length in lengths]) for i in (0, 1))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, **unused) -> BaseModelOutput:
        if input_ids.shape[1] > self.config.n_positions:
            raise ValueError(f"input of {input_ids.shape[1]} tokens is longer than n_positions "
                             f"({self.config.n_positions}); truncate it")
        hidden = self.emb_ln(self.embeddings(input_ids, token_type_ids))
        rotary = self.rotary(attention_mask, input_ids.shape[1], input_ids.device)
        kernel = packed_kernel(self.config.attn_backend, hidden)
        if kernel is None:
            tokens = TokenLayout(attention_mask)
        else:  # every layer runs on the real tokens only
            mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
            tokens = TokenLayout(packing=Packing.of(mask), kernel=kernel)
            hidden = tokens.packing.unpad(hidden)
            if rotary is not None:  # each real token's row of its table
                packing = tokens.packing
                rotary = tuple(table[packing.positions] if table.dim() == 2 else table.flatten(0, 1)[packing.keep]
                               for table in rotary)
        residual = None
        for layer in self.encoder.layers:
            hidden, residual = layer(hidden, tokens, rotary, residual)
        if tokens.packing is not None:
            hidden = tokens.packing.repad(hidden)
        return BaseModelOutput(last_hidden_state=hidden)


class NomicBertLMHead(nn.Module):
    def __init__(self, config: NomicBertConfig):
        super().__init__()
        self.transform = nn.Module()
        self.transform.dense = nn.Linear(config.n_embd, config.n_embd, bias=config.mlp_fc1_bias)
        self.transform.layer_norm = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.activation = F.silu if config.activation_function == "swiglu" else F.gelu
        self.decoder = nn.Linear(config.n_embd, config.vocab_size, bias=config.mlp_fc1_bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = self.transform.layer_norm(self.activation(self.transform.dense(hidden)))
        return self.decoder(hidden)


class NomicBertForMaskedLM(NomicBertPreTrainedModel):
    """Encoder + MLM head (decoder tied to the word embeddings). With labels (-100 = not masked), the loss and
    the logits are computed only at the masked positions."""

    _tied_weights_keys = {"cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight"}

    def __init__(self, config: NomicBertConfig):
        super().__init__(config)
        self.bert = NomicBertModel(config)
        self.cls = nn.Module()
        self.cls.predictions = NomicBertLMHead(config)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.cls.predictions.decoder

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.cls.predictions.decoder = value

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                **unused) -> MaskedLMOutput:
        hidden = self.bert(input_ids, attention_mask, token_type_ids).last_hidden_state
        if labels is None:
            return MaskedLMOutput(logits=self.cls.predictions(hidden))
        masked = labels != -100
        logits = self.cls.predictions(hidden[masked])
        loss = F.cross_entropy(logits.float(), labels[masked])
        return MaskedLMOutput(loss=loss, logits=logits)


# exist_ok stays False: registering over a model type transformers (or anyone) already has is an error
AutoConfig.register(NomicBertConfig.model_type, NomicBertConfig)
AutoModel.register(NomicBertConfig, NomicBertModel)
AutoModelForMaskedLM.register(NomicBertConfig, NomicBertForMaskedLM)
