"""NV-Embed's latent-attention pooling: each token's hidden state attends to a trainable latent array
(r latents, h heads; the hidden states are the queries, the latents keys and values), a GEGLU MLP follows,
both with residuals and pre-norm, then mean pooling over the tokens the mask keeps (NV-Embed excludes the
instruction tokens).

Saved as a sentence-transformers module folder: config.json (sizes, include_prompt) and model.safetensors.
"""

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

CONFIG_KEYS = ("hidden_size", "num_latents", "num_heads", "mlp_ratio")


class LatentAttentionPooling(nn.Module):
    def __init__(self, hidden_size: int, num_latents: int = 512, num_heads: int = 8, mlp_ratio: int = 4):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"latent attention: hidden_size {hidden_size} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.sizes = dict(zip(CONFIG_KEYS, (hidden_size, num_latents, num_heads, mlp_ratio)))
        self.latents = nn.Parameter(torch.randn(num_latents, hidden_size) * hidden_size ** -0.5)
        self.norm, self.norm_latents, self.norm_mlp = (nn.LayerNorm(hidden_size) for _ in range(3))
        self.to_q = nn.Linear(hidden_size, hidden_size, bias=False)
        self.to_kv = nn.Linear(hidden_size, 2 * hidden_size, bias=False)
        self.to_out = nn.Linear(hidden_size, hidden_size)
        self.mlp_in = nn.Linear(hidden_size, 2 * mlp_ratio * hidden_size)
        self.mlp_out = nn.Linear(mlp_ratio * hidden_size, hidden_size)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, -1)).transpose(-3, -2)  # (..., heads, rows, head_dim)

    def forward(self, hidden: torch.Tensor, pool_mask: torch.Tensor) -> torch.Tensor:
        """hidden (b, n, d), pool_mask (b, n) with 1 on the tokens to average -> (b, d)."""
        latents = self.norm_latents(self.latents)
        keys, values = self.to_kv(latents).chunk(2, dim=-1)
        attended = F.scaled_dot_product_attention(
            self._heads(self.to_q(self.norm(hidden))), self._heads(keys), self._heads(values))
        hidden = hidden + self.to_out(attended.transpose(-3, -2).flatten(-2))
        value, gate = self.mlp_in(self.norm_mlp(hidden)).chunk(2, dim=-1)
        hidden = hidden + self.mlp_out(value * F.gelu(gate))
        weights = pool_mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)


def save_head(head: LatentAttentionPooling, folder: Path, include_prompt: bool,
              state: dict[str, torch.Tensor] | None = None) -> None:
    """Write the head (or `state`, its weights from a checkpoint) and its config to `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({**head.sizes, "include_prompt": include_prompt}, indent=2))
    weights = head.state_dict() if state is None else state
    save_file({name: tensor.detach().float().contiguous() for name, tensor in weights.items()},
              folder / "model.safetensors", metadata={"format": "pt"})


def load_head(folder: Path) -> tuple[LatentAttentionPooling, bool]:
    """The head saved in `folder` and whether it pools over the prompt tokens."""
    config = json.loads((folder / "config.json").read_text())
    head = LatentAttentionPooling(**{key: config[key] for key in CONFIG_KEYS})
    head.load_state_dict(load_file(folder / "model.safetensors"))
    return head, bool(config.get("include_prompt", True))
