"""Module, Parameter and the containers: registration, traversal, state dicts, modes, hooks, repr."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest

import ember
from ember import nn
from ember.nn.containers import ModuleDict, ModuleList, ParameterDict, ParameterList, Sequential
from ember.nn.module import Module, StateDictError
from ember.nn.parameter import Parameter


class Affine(Module):
    def __init__(self, n_in: int, n_out: int, bias: bool = True) -> None:
        super().__init__()
        self.weight = Parameter(ember.randn(n_out, n_in))
        if bias:
            self.bias = Parameter(ember.zeros(n_out))
        else:
            self.register_parameter("bias", None)
        self.register_buffer("calls", ember.zeros(1))
        self.register_buffer("scratch", ember.zeros(2), persistent=False)

    def forward(self, x):
        y = x @ self.weight.T
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"{self.weight.shape[1]}, {self.weight.shape[0]}"


class Net(Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = Sequential(Affine(3, 4), Affine(4, 4, bias=False))
        self.heads = ModuleDict({"a": Affine(4, 2), "b": Affine(4, 1)})
        self.scale = 2.0

    def forward(self, x):
        h = self.body(x)
        return self.heads["a"](h), self.heads["b"](h)


def test_parameter_shares_storage_and_requires_grad():
    t = ember.randn(3)
    p = Parameter(t)
    assert p.requires_grad and p.is_leaf and isinstance(p, ember.Tensor)
    p.data[0] = 5.0
    assert t.data[0] == 5.0
    assert "Parameter containing" in repr(p)
    assert not Parameter(ember.zeros(2), requires_grad=False).requires_grad
    with pytest.raises(ember.DTypeError, match="floating"):
        Parameter(ember.arange(3))


def test_registration_and_traversal_order():
    net = Net()
    names = [n for n, _ in net.named_parameters()]
    assert names == ["body.0.weight", "body.0.bias", "body.1.weight", "heads.a.weight", "heads.a.bias",
                     "heads.b.weight", "heads.b.bias"]
    assert [n for n, _ in net.named_buffers()] == ["body.0.calls", "body.0.scratch", "body.1.calls",
                                                   "body.1.scratch", "heads.a.calls", "heads.a.scratch",
                                                   "heads.b.calls", "heads.b.scratch"]
    assert [n for n, _ in net.named_modules()] == ["", "body", "body.0", "body.1", "heads", "heads.a", "heads.b"]
    assert [n for n, _ in net.named_children()] == ["body", "heads"]
    assert net.scale == 2.0 and "scale" not in net._parameters
    assert net.get_submodule("heads.a") is net.heads["a"]
    assert net.get_parameter("body.0.bias") is net.body[0].bias
    assert net.num_parameters() == 12 + 4 + 16 + 8 + 2 + 4 + 1


def test_shared_parameter_listed_once():
    a = Affine(2, 2)
    m = Sequential(a, a)
    assert len(list(m.parameters())) == 2
    assert len(list(m.named_parameters(remove_duplicate=False))) == 4


def test_reassign_and_delete():
    m = Affine(2, 3)
    with pytest.raises(TypeError, match="parameter 'weight'"):
        m.weight = ember.zeros(3, 2)  # a plain tensor would silently stop being trained
    m.bias = None
    assert "bias" not in dict(m.named_parameters())
    del m.weight
    assert not hasattr(m, "weight")
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        m.nothing


def test_assign_before_super_init_is_a_clear_error():
    class Bad(Module):
        def __init__(self):
            self.fc = Affine(2, 2)

    with pytest.raises(AttributeError, match="super"):
        Bad()


def test_forward_backward_and_zero_grad():
    net = Net()
    a, b = net(ember.randn(5, 3))
    (a.sum() + b.sum()).backward()
    assert all(p.grad is not None for p in net.parameters())
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())
    a, _ = net(ember.randn(5, 3))
    a.sum().backward()
    net.zero_grad(set_to_none=False)
    assert np.all(net.body[0].weight.grad.numpy() == 0)


def test_train_eval_propagates():
    net = Net()
    assert net.training and net.heads["b"].training
    net.eval()
    assert not any(m.training for m in net.modules())
    net.train()
    assert all(m.training for m in net.modules())


def test_state_dict_round_trip_and_sharing():
    net = Net()
    sd = net.state_dict()
    assert list(sd) == ["body.0.weight", "body.0.bias", "body.0.calls", "body.1.weight", "body.1.calls",
                        "heads.a.weight", "heads.a.bias", "heads.a.calls", "heads.b.weight", "heads.b.bias",
                        "heads.b.calls"]
    assert not sd["body.0.weight"].requires_grad
    snapshot = {k: v.clone() for k, v in sd.items()}
    other = Net()
    result = other.load_state_dict(snapshot)
    assert result.missing_keys == [] and result.unexpected_keys == []
    x = ember.randn(4, 3)
    for u, v in zip(net(x), other(x)):
        np.testing.assert_array_equal(u.detach().numpy(), v.detach().numpy())
    # loading copies into the existing tensors: references held by an optimizer stay valid
    w = other.body[0].weight
    other.load_state_dict(Net().state_dict())
    assert other.body[0].weight is w


def test_load_state_dict_lists_every_problem():
    net = Net()
    sd = {k: v.clone() for k, v in net.state_dict().items()}
    sd["body.0.weight"] = ember.zeros(2, 2)
    sd["extra.thing"] = ember.zeros(1)
    del sd["heads.b.bias"]
    with pytest.raises(StateDictError) as info:
        Net().load_state_dict(sd)
    msg = str(info.value)
    assert "body.0.weight: checkpoint has shape (2, 2), the module has (4, 3)" in msg
    assert "missing keys: heads.b.bias" in msg and "unexpected keys: extra.thing" in msg
    del sd["extra.thing"]
    sd["body.0.weight"] = ember.zeros(4, 3)
    res = Net().load_state_dict(sd, strict=False)
    assert res.missing_keys == ["heads.b.bias"]
    with pytest.raises(TypeError, match="dict"):
        Net().load_state_dict([1, 2])


def test_load_state_dict_bumps_version_so_stale_graphs_are_caught():
    m = Affine(2, 2)
    y = (m.weight * m.weight).sum()
    m.load_state_dict(Affine(2, 2).state_dict())
    with pytest.raises(ember.AutogradError):
        y.backward()


def test_to_dtype_changes_parameters_in_place():
    m = Affine(3, 2)
    w = m.weight
    m.double()
    assert m.weight is w and w.dtype == ember.float64 and m.calls.dtype == ember.float64
    assert m(ember.randn(2, 3, dtype=ember.float64)).dtype == ember.float64
    with pytest.raises(TypeError, match="floating"):
        m.to(ember.int32)
    m.to("cpu")


def test_hooks_and_apply():
    m = Affine(2, 2)
    seen = []
    h = m.register_forward_hook(lambda mod, args, out: seen.append(out.shape))
    m.register_forward_pre_hook(lambda mod, args: (args[0] * 0,))
    out = m(ember.ones(3, 2))
    assert seen == [(3, 2)]
    np.testing.assert_array_equal(out.detach().numpy(), np.broadcast_to(m.bias.detach().numpy(), (3, 2)))
    h.remove()
    m(ember.ones(1, 2))
    assert len(seen) == 1
    order = []
    Net().apply(lambda mod: order.append(type(mod).__name__))
    assert order[-1] == "Net" and order.count("Affine") == 4


def test_repr_nests_like_pytorch():
    text = repr(Net())
    assert text.startswith("Net(\n  (body): Sequential(\n    (0): Affine(3, 4)")
    assert "(heads): ModuleDict(" in text
    assert repr(Sequential()) == "Sequential()"


def test_sequential_indexing_and_named_entries():
    s = Sequential(OrderedDict(first=Affine(2, 3), second=Affine(3, 1)))
    assert [n for n, _ in s.named_children()] == ["first", "second"]
    assert isinstance(s[1], Affine) and s[-1] is s[1] and len(s) == 2
    assert isinstance(s[:1], Sequential) and len(s[:1]) == 1
    with pytest.raises(IndexError, match="out of range"):
        s[5]
    with pytest.raises(TypeError, match="not a Module"):
        Sequential(Affine(2, 2), "relu")
    assert s(ember.randn(4, 2)).shape == (4, 1)


def test_module_list_and_dict():
    ml = ModuleList([Affine(2, 2) for _ in range(3)])
    ml.append(Affine(2, 2))
    ml.insert(0, Affine(2, 5))
    assert len(ml) == 5 and ml[0].weight.shape == (5, 2)
    del ml[0]
    assert [n for n, _ in ml.named_children()] == ["0", "1", "2", "3"]
    assert len(list(ml.parameters())) == 8
    md = ModuleDict()
    md["x"] = Affine(1, 1)
    assert "x" in md and list(md.keys()) == ["x"]
    with pytest.raises(KeyError, match="no module 'y'"):
        md["y"]
    pl = ParameterList([ember.zeros(2), ember.ones(3)])
    pd = ParameterDict({"a": ember.zeros(1)})
    assert len(list(pl.parameters())) == 2 and pd["a"].requires_grad


def test_nn_namespace_exports():
    assert nn.Module is Module and nn.Parameter is Parameter and nn.Sequential is Sequential
