"""Networks made fast for inference on a CPU, the same outputs to float rounding.

:func:`fast_cpu` folds batch normalisations into the convolutions and converts to channels-last;
:func:`inference_graph` traces a network into an optimised TorchScript graph, checked against the
network itself. ``pipeline/detect.py`` applies both to the detection networks when it loads them.
Off the CPU both return the network as it is.
"""

from __future__ import annotations


def fast_cpu(net, channels_last: bool = True):
    """On a CPU, a channels-last copy of ``net`` with its batch normalisations folded into the
    convolutions: the same outputs (to float rounding, ~1e-6 in the probabilities) about 3x faster
    for cell-gstn (PyTorch's NCHW max-pooling is slow on one thread)."""
    import copy

    import torch

    try:
        if next(net.parameters()).device.type != "cpu":
            return net
        fast = copy.deepcopy(net).eval()
        fold_batchnorm(fast)
        return fast.to(memory_format=torch.channels_last) if channels_last else fast
    except (StopIteration, RuntimeError, AttributeError):  # no parameters or a module that cannot: as it is
        return net


class GraphNet:
    """A network as an optimised TorchScript graph, for inference only (calls go to the graph;
    anything else -- parameters, attributes, eval() -- to the network itself, so moving or
    training it would not change the graph: load the network again instead)."""

    def __init__(self, net, graph):
        self._net, self._graph = net, graph

    def __call__(self, x):
        return self._graph(x)

    def __getattr__(self, name):
        if name.startswith("_"):  # copy/pickle probe private names before __init__ ran: no recursion
            raise AttributeError(name)
        return getattr(self._net, name)


def inference_graph(net, size: int):
    """On a CPU, ``net`` traced and optimised for inference by TorchScript (oneDNN convolutions
    fused with their activations, tensors kept in oneDNN's layout between layers): ~40% less
    time for both detection networks, the same outputs to float rounding. Checked against the
    network on two batch sizes; the network as it is when tracing fails or differs, or off the CPU.
    (TorchScript is deprecated in favour of torch.compile, whose compile time per process is
    far too long for a CLI or a dask worker; torch is pinned, so this stays until it is gone.)"""
    import warnings

    import torch

    try:
        if next(net.parameters()).device.type != "cpu":
            return net
        g = torch.Generator().manual_seed(0)
        x = torch.rand(5, 3, size, size, generator=g).contiguous(memory_format=torch.channels_last)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # deprecation and tracer notes (shape checks that hold for this size)
            graph = torch.jit.optimize_for_inference(torch.jit.trace(net.eval(), x[:2], check_trace=False))
            for b in (x[:1], x, 255 * x):  # cell-gstn takes values 0..1, the first pass 0..255
                want, got = net(b), graph(b)
                want = want if isinstance(want, tuple) else (want,)
                got = got if isinstance(got, tuple) else (got,)
                if len(want) != len(got) or not all(
                        (w is None and o is None) or torch.allclose(w, o, atol=1e-3, rtol=1e-3) for w, o in zip(want, got, strict=True)):
                    return net
    except Exception:  # noqa: BLE001 -- a network TorchScript cannot trace: as it is
        return net
    return GraphNet(net, graph)


def fold_batchnorm(module) -> None:
    """Fold each BatchNorm2d that follows a Conv2d into the convolution (inference only: the same
    outputs to float rounding, one pass over the activations fewer): in an nn.Sequential, and the
    (convolution, normalisation) attribute pairs a module names in ``conv_bn_pairs`` (EfficientNet's
    blocks, whose forward is not a Sequential)."""
    from itertools import pairwise

    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    def foldable(conv, bn):
        return isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats

    for m in module.modules():
        pairs = list(pairwise(m._modules)) if isinstance(m, nn.Sequential) else list(getattr(m, "conv_bn_pairs", ()))
        for a, b in pairs:
            conv, bn = m._modules.get(a), m._modules.get(b)
            if foldable(conv, bn):
                m._modules[a] = fuse_conv_bn_eval(conv, bn)
                m._modules[b] = nn.Identity()
