"""GradCache (Gao et al., 2021): a contrastive step over a batch too large to hold activations for at once.

1. embed every chunk without autograd (remembering each chunk's random state), 2. compute the loss on the
detached vectors and take its gradient with respect to them, 3. re-embed each chunk with autograd (same random
state, so dropout matches) and back-propagate the cached vector gradient. Parameter gradients equal those of
the plain step; activation memory is that of one chunk.
"""

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch


def _random_state() -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The CPU's random state and, once this process computes on CUDA, every visible GPU's: dropout on either must
    replay alike (a CPU worker on a GPU node never opens a CUDA context for it)."""
    return torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []


@contextlib.contextmanager
def _replaying(state: tuple[torch.Tensor, list[torch.Tensor]]) -> Iterator[None]:
    """Run the block from a saved random state, then go on from the current one."""
    cpu, gpus = state
    with torch.random.fork_rng(devices=range(len(gpus))):
        torch.set_rng_state(cpu)
        if gpus:
            torch.cuda.set_rng_state_all(gpus)
        yield


def _embed_without_grad(encode: Callable, chunks: Sequence) -> tuple[torch.Tensor, list]:
    states, vectors = [], []
    for chunk in chunks:
        states.append(_random_state())
        with torch.no_grad():
            vectors.append(encode(chunk))
    return torch.cat(vectors), states


def grad_cache_step(encode: Callable, inputs: Sequence[Sequence], loss_fn: Callable[..., torch.Tensor],
                    encode_last: Callable | None = None, scale: Callable | None = None) -> torch.Tensor:
    """Back-propagate loss_fn(vectors of inputs[0], vectors of inputs[1], ...) through `encode`, chunk by chunk.

    inputs: one sequence of chunks per loss argument (e.g. query chunks, document chunks); encode(chunk) returns
    (rows, d). encode_last, when given, re-embeds the very last chunk (DDP: the wrapped model, whose backward
    then synchronises the gradients the other chunks accumulated locally). scale, when given, maps the loss to
    what is back-propagated (fp16's loss scaler). Returns the detached loss; parameter .grad holds its gradient.
    """
    cached = [_embed_without_grad(encode, chunks) for chunks in inputs]
    leaves = [vectors.requires_grad_() for vectors, _ in cached]
    loss = loss_fn(*leaves)
    (scale(loss) if scale else loss).backward()
    last = (len(inputs) - 1, len(inputs[-1]) - 1)
    for group, (chunks, (vectors, states), leaf) in enumerate(zip(inputs, cached, leaves)):
        start = 0
        for index, (chunk, state) in enumerate(zip(chunks, states)):
            with _replaying(state):
                chunk_vectors = (encode_last or encode)(chunk) if (group, index) == last else encode(chunk)
            rows = chunk_vectors.shape[0]
            chunk_vectors.backward(leaf.grad[start:start + rows])
            start += rows
    return loss.detach()
