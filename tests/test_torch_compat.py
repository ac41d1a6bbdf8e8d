"""Older torch (the GPU image runs 2.11): DDP without forward_sync_buffers takes broadcast_buffers instead."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch import nn

from wattscale.model import Llama, ModelConfig
from wattscale.train.parallel import DistributedContext, ddp_no_buffer_sync, sum_over_ranks, wrap_model


def test_the_buffer_sync_keyword_follows_the_ddp_signature() -> None:
    class OldDDP:  # torch <= 2.12's signature: no forward_sync_buffers
        def __init__(self, module, device_ids=None, broadcast_buffers=True) -> None: ...

    class NewDDP:
        def __init__(self, module, device_ids=None, broadcast_buffers=True, forward_sync_buffers=True) -> None: ...

    assert ddp_no_buffer_sync(OldDDP) == {"broadcast_buffers": False}
    assert ddp_no_buffer_sync(NewDDP) == {"forward_sync_buffers": False}


@pytest.mark.filterwarnings("ignore:`broadcast_buffers` is deprecated:FutureWarning")  # torch 2.13 says so
def test_ddp_is_built_and_trains_through_the_fallback_keyword(monkeypatch, tmp_path) -> None:
    """With forward_sync_buffers taken away (as in torch 2.11), wrap_model builds a real DDP with
    broadcast_buffers=False and its loss backpropagates (a one-process gloo group)."""
    real = nn.parallel.DistributedDataParallel
    built = {}

    class DDPWithoutForwardSync(real):  # the signature torch 2.11 has
        def __init__(self, module, device_ids=None, broadcast_buffers=True):
            built["broadcast_buffers"] = broadcast_buffers
            super().__init__(module, device_ids=device_ids, broadcast_buffers=broadcast_buffers)

    monkeypatch.setattr(nn.parallel, "DistributedDataParallel", DDPWithoutForwardSync)
    assert ddp_no_buffer_sync() == {"broadcast_buffers": False}
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        model = Llama(ModelConfig.from_name("llama-tiny"))
        ctx = DistributedContext(0, 0, 2, "gloo", torch.device("cpu"))  # the DDP branch (the group has one rank)
        parallel = wrap_model(model, ctx, "ddp")
        assert built == {"broadcast_buffers": False} and parallel.grad_scale == 2.0
        ids = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(0))
        loss = parallel.loss(ids[:, :-1], ids[:, 1:], reduction="sum")
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
        summed = sum_over_ranks(ctx, loss.detach())  # the device-side loss sum, one rank here
        assert summed.dtype == torch.float64 and summed.shape == () and summed.item() == float(loss.item())
    finally:
        dist.destroy_process_group()
