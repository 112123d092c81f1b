"""CPU: the cupy backend's cache of DLPack views of torch parameters (ops._param_view), with a stand-in for
the DLPack conversion (_cupy_backend.view): a view is reused while the same tensor object points at the same
memory, made anew after .data is swapped, and dropped when the tensor is."""

import gc

import torch

from cupyfused import ops


def test_param_view_cache(monkeypatch):
    monkeypatch.setattr(ops._cupy_backend, "view", lambda t: ("view of", t.data_ptr(), tuple(t.shape)))
    monkeypatch.setattr(ops, "_PARAM_VIEWS", {})
    w = torch.nn.Parameter(torch.rand(32, 8, 3, 3))
    b = torch.rand(32)
    first = ops._param_view(w, w.detach())
    assert ops._param_view(w, w.detach()) is first  # reused
    assert ops._param_view(b, b) != first  # tensors are told apart without comparing them elementwise
    with torch.no_grad():
        w.mul_(2.0)  # in place: same memory, same view
    assert ops._param_view(w, w.detach()) is first
    w.data = torch.rand(32, 8, 3, 3)  # new memory: a new view
    again = ops._param_view(w, w.detach())
    assert again is not first and again[1] == w.data_ptr()
    assert len(ops._PARAM_VIEWS) == 2
    del b
    gc.collect()
    assert len(ops._PARAM_VIEWS) == 1  # the entry went with its tensor
