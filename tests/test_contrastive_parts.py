"""Contrastive building blocks: InfoNCE with negatives gathered across 2 real gloo workers equals 1 worker
with the whole batch (loss and gradients), stage-2 loss ignores other rows, Matryoshka, GradCache equals the
plain step, latent-attention pooling respects its mask."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from raylib.models.bidirectional import make_bidirectional
from raylib.models.biencoder import LogitScale
from raylib.models.latent_attention import LatentAttentionPooling
from raylib.runtime import free_port
from raylib.train.grad_cache import grad_cache_step
from raylib.train.losses import info_nce, matryoshka_info_nce

DIM, BATCH, HARD = 16, 32, 2


def tiny_encoder(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Dropout(0.1), torch.nn.GELU(), torch.nn.Linear(32, DIM))


def batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(BATCH, 8, generator=generator), torch.randn(BATCH, 8, generator=generator),
            torch.randn(BATCH, HARD, 8, generator=generator))


def loss_and_grads(encoder, scale, queries, positives, negatives, **options):
    encoder.eval()
    loss = info_nce(encoder(queries), encoder(positives), encoder(negatives), scale(), **options)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in encoder.parameters()], scale.log_scale.grad.clone()


def _worker(rank: int, port: int, options: dict, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    encoder, scale = tiny_encoder(), LogitScale(0.05, learnable=True)
    half = slice(rank * BATCH // 2, (rank + 1) * BATCH // 2)
    queries, positives, negatives = (tensor[half] for tensor in batch())
    loss, grads, scale_grad = loss_and_grads(encoder, scale, queries, positives, negatives, **options)
    for tensor in (loss, *grads, scale_grad):  # what DDP does with gradients: average over workers
        dist.all_reduce(tensor)
        tensor /= 2
    if rank == 0:  # as arrays: a tensor would travel as a file descriptor that dies with this process
        results.put([loss.numpy(), [grad.numpy() for grad in grads], scale_grad.numpy()])
    dist.destroy_process_group()


@pytest.mark.parametrize("options", [{}, {"symmetric": True}])
def test_two_workers_of_16_equal_one_worker_of_32(options):
    single = loss_and_grads(tiny_encoder(), LogitScale(0.05, learnable=True), *batch(), **options)
    context = mp.get_context("spawn")
    results = context.Queue()
    workers = [context.Process(target=_worker, args=(rank, port, options, results))
               for port in [free_port()] for rank in range(2)]
    for worker in workers:
        worker.start()
    loss, grads, scale_grad = results.get(timeout=120)
    loss, grads, scale_grad = torch.from_numpy(loss), [torch.from_numpy(grad) for grad in grads], torch.from_numpy(
        scale_grad)
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    assert torch.allclose(loss, single[0], atol=1e-5)
    for got, expected in zip(grads, single[1]):
        assert torch.allclose(got, expected, atol=1e-5)
    assert torch.allclose(scale_grad, single[2], atol=1e-5)


def test_stage_two_loss_sees_no_in_batch_negatives():
    encoder = tiny_encoder().eval()
    with torch.no_grad():
        q, p, n = (encoder(tensor) for tensor in batch())
        others_changed = p.clone()
        others_changed[1:] = torch.randn_like(p[1:])
        # in-batch negatives: another row's positive changes the first query's loss
        assert not torch.allclose(info_nce(q[:1], p, n[:1], 20.0), info_nce(q[:1], others_changed, n[:1], 20.0))
        # stage 2: each query sees only its own positive and hard negatives
        per_row = torch.stack([info_nce(q[i:i + 1], p[i:i + 1], n[i:i + 1], 20.0, in_batch=False) for i in range(BATCH)])
        assert torch.allclose(info_nce(q, p, n, 20.0, in_batch=False), per_row.mean(), atol=1e-6)
        assert torch.allclose(info_nce(q[:1], p[:1], n[:1], 20.0, in_batch=False),
                              info_nce(q[:1], others_changed[:1], n[:1], 20.0, in_batch=False))


def test_matryoshka_averages_over_truncated_dimensions():
    queries, positives, negatives = (torch.randn(8, DIM), torch.randn(8, DIM), torch.randn(8, HARD, DIM))
    expected = (info_nce(queries[:, :4], positives[:, :4], negatives[..., :4], 20.0)
                + info_nce(queries, positives, negatives, 20.0)) / 2
    assert torch.allclose(matryoshka_info_nce(queries, positives, negatives, 20.0, [4, DIM]), expected)


def test_grad_cache_gives_the_plain_steps_gradients_with_dropout_on():
    queries, positives, _ = batch()
    cached, plain = tiny_encoder().train(), tiny_encoder().train()

    def loss_fn(q, p):
        return info_nce(q, p, None, 20.0, symmetric=True)

    torch.manual_seed(5)
    loss = grad_cache_step(cached, [queries.split(8), positives.split(8)], loss_fn)
    torch.manual_seed(5)  # the plain step, drawing dropout chunk by chunk in the same order
    plain_loss = loss_fn(torch.cat([plain(c) for c in queries.split(8)]), torch.cat([plain(c) for c in positives.split(8)]))
    plain_loss.backward()
    assert torch.allclose(loss, plain_loss.detach())
    for got, expected in zip(cached.parameters(), plain.parameters()):
        assert torch.allclose(got.grad, expected.grad, atol=1e-5)

    expected = [p.grad.clone() for p in cached.parameters()]  # fp16's loss scaling multiplies every gradient
    cached.zero_grad()
    torch.manual_seed(5)
    scaled_loss = grad_cache_step(cached, [queries.split(8), positives.split(8)], loss_fn, scale=lambda loss: loss * 1024.0)
    assert torch.allclose(scaled_loss, loss)  # the loss itself comes back unscaled
    for got, plain_grad in zip(cached.parameters(), expected):
        assert torch.allclose(got.grad, plain_grad * 1024.0, rtol=1e-4, atol=1e-3)


def test_latent_attention_pooling_ignores_masked_tokens_and_trains():
    pooling = LatentAttentionPooling(hidden_size=32, num_latents=8, num_heads=4)
    hidden = torch.randn(2, 6, 32)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [0, 1, 1, 1, 0, 0]])  # e.g. instruction tokens and padding masked
    pooled = pooling(hidden, mask)
    changed = hidden.clone()
    changed[0, :2] = torch.randn(2, 32)  # masked tokens of row 0
    changed[1, 4:] = torch.randn(2, 32)
    assert pooled.shape == (2, 32)
    assert torch.allclose(pooling(changed, mask), pooled, atol=1e-6)  # each token attends to latents only
    pooled.sum().backward()
    assert pooling.latents.grad is not None and pooling.latents.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="divisible"):
        LatentAttentionPooling(hidden_size=30, num_heads=4)


@pytest.mark.parametrize("family", ["mistral", "llama", "qwen2"])
def test_decoders_become_bidirectional_and_keep_padding(family):
    from transformers import AutoConfig, AutoModel

    torch.manual_seed(0)
    config = AutoConfig.for_model(family, vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = AutoModel.from_config(config).eval()
    tokens = torch.randint(0, 100, (2, 8))
    last_changed = tokens.clone()
    last_changed[:, -1] = (last_changed[:, -1] + 1) % 100
    full = torch.ones(2, 8, dtype=torch.long)

    def first_token(ids, mask):
        with torch.no_grad():
            return model(ids, attention_mask=mask).last_hidden_state[:, 0]

    assert torch.allclose(first_token(tokens, full), first_token(last_changed, full))  # causal: cannot see ahead
    make_bidirectional(model)
    assert not torch.allclose(first_token(tokens, full), first_token(last_changed, full))
    padded = full.clone()
    padded[:, -2:] = 0
    other_padding = tokens.clone()
    other_padding[:, -2:] = 7
    with torch.no_grad():
        kept = model(tokens, attention_mask=padded).last_hidden_state[:, :6]
        assert torch.allclose(kept, model(other_padding, attention_mask=padded).last_hidden_state[:, :6], atol=1e-5)


def test_lora_trains_only_adapters_and_pooling_and_merges_to_the_same_outputs():
    from transformers import AutoConfig, AutoModel

    from raylib.models.lora import apply_lora, merged_state

    torch.manual_seed(0)
    config = AutoConfig.for_model("mistral", vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    backbone = make_bidirectional(AutoModel.from_config(config))
    adapted = apply_lora(backbone, rank=4, alpha=8, dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    pooling = LatentAttentionPooling(hidden_size=32, num_latents=4, num_heads=4)
    trainable = {name for name, p in adapted.named_parameters() if p.requires_grad}
    assert trainable and all("lora_A" in name or "lora_B" in name for name in trainable)
    assert all(any(f".{target}.lora_" in name for name in trainable) for target in ("q_proj", "k_proj", "v_proj", "o_proj"))
    assert all(p.requires_grad for p in pooling.parameters())

    tokens, mask = torch.randint(0, 100, (2, 6)), torch.ones(2, 6, dtype=torch.long)
    for layer in adapted.modules():  # move the adapters off zero so merging has something to fold in
        if hasattr(layer, "lora_B"):
            torch.nn.init.normal_(layer.lora_B["default"].weight, std=0.1)
    adapted.eval()
    plain = make_bidirectional(AutoModel.from_config(config)).eval()
    live = {name: tensor.clone() for name, tensor in adapted.state_dict().items()}
    merged = merged_state(adapted, adapted.state_dict())
    assert all(torch.equal(tensor, live[name]) for name, tensor in adapted.state_dict().items())  # untouched
    assert not any("lora" in name for name in merged)
    plain.load_state_dict(merged)  # strict: exactly the plain model's keys
    with torch.no_grad():
        before = pooling(adapted(tokens, attention_mask=mask).last_hidden_state, mask)
        after = pooling(plain(tokens, attention_mask=mask).last_hidden_state, mask)
    assert torch.allclose(before, after, atol=1e-5)


def test_pair_rows_follow_the_piece_readers_bad_row_rules(tmp_path):
    import json

    from raylib.data.pairs import pairs_pieces, read_pairs_piece

    lines = [json.dumps({"query": "q1", "document": "d1", "negatives": ["n1", "", "n2"]}), "{not json", "[1]",
             json.dumps({"query": "q2", "document": "d2", "negatives": "one text, not a list"}),
             json.dumps({"query": "q3", "document": "d3", "negatives": ["n3"]}),
             json.dumps({"query": "", "document": "d4", "negatives": ["n4", "n5"]})]
    (tmp_path / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    (piece,) = pairs_pieces(str(tmp_path), "jsonl", "query")
    table = read_pairs_piece(piece, str(tmp_path), "query", "document", "negatives", hard_negatives=2)
    assert table.column("query").to_pylist() == ["q1", None, None, None, None, None]
    assert table.column("negatives").to_pylist()[0] == ["n1", "n2"]  # the first good ones
    assert [error and error.split(" (")[0] for error in table.column("_error").to_pylist()] == [
        None, "line is not valid JSON", "line is not a JSON object", "negatives is a str, not a list of texts",
        "needs 2 hard negatives, has 1", "query is missing, empty or not a string"]
    assert all(where.startswith(f"{tmp_path}/pairs.jsonl byte ") for where in table.column("_where").to_pylist())
