"""``Module``: the base class of every layer and model, with PyTorch's API.

A module owns parameters, buffers and child modules, registered by plain attribute
assignment (``self.fc = Linear(3, 4)``), and walks them in registration order, so
``state_dict`` keys are stable (``fc.weight``, ``blocks.0.attn.proj.bias``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import numpy as np

from .. import dtypes as _dt
from ..autograd import STATE, no_grad
from ..device import get_backend, to_device
from ..errors import EmberError, ShapeError
from ..tensor import Tensor
from .parameter import Parameter


class StateDictError(EmberError, KeyError):
    """``load_state_dict`` found missing, unexpected or wrongly shaped keys."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class IncompatibleKeys(NamedTuple):
    missing_keys: list[str]
    unexpected_keys: list[str]


class _RemovableHandle:
    """Returned by ``register_*_hook``; ``handle.remove()`` unregisters the hook."""

    def __init__(self, hooks: dict, key: int) -> None:
        self._hooks, self._key = hooks, key

    def remove(self) -> None:
        self._hooks.pop(self._key, None)


_hook_ids = iter(range(1 << 62))


class Module:
    """Base class for layers and models: subclass it, assign parameters and submodules in
    ``__init__`` (after ``super().__init__()``), and write ``forward``."""

    training: bool

    def __init__(self) -> None:
        d = self.__dict__
        d["training"] = True
        d["_parameters"] = OrderedDict()
        d["_buffers"] = OrderedDict()
        d["_non_persistent"] = set()
        d["_modules"] = OrderedDict()
        d["_forward_hooks"] = OrderedDict()
        d["_forward_pre_hooks"] = OrderedDict()

    # ------------------------------------------------------------------ registration
    def __setattr__(self, name: str, value: Any) -> None:
        d = self.__dict__
        if "_parameters" not in d:
            if isinstance(value, (Parameter, Module)):
                raise AttributeError(f"cannot assign {type(value).__name__} {name!r} before "
                                     f"{type(self).__name__}.__init__ calls super().__init__()")
            object.__setattr__(self, name, value)
            return
        params, buffers, modules = d["_parameters"], d["_buffers"], d["_modules"]
        if isinstance(value, Parameter):
            self._discard(name)
            params[name] = value
        elif isinstance(value, Module):
            self._discard(name)
            modules[name] = value
        elif name in params:
            if value is not None:
                raise TypeError(f"cannot assign {type(value).__name__} to parameter {name!r} of "
                                f"{type(self).__name__}; expected an ember.nn.Parameter or None")
            params[name] = None
        elif name in modules:
            if value is not None:
                raise TypeError(f"cannot assign {type(value).__name__} to submodule {name!r} of "
                                f"{type(self).__name__}; expected a Module or None")
            modules[name] = None
        elif name in buffers:
            if value is not None and not isinstance(value, Tensor):
                raise TypeError(f"cannot assign {type(value).__name__} to buffer {name!r} of "
                                f"{type(self).__name__}; expected a Tensor or None")
            buffers[name] = value
        else:
            object.__setattr__(self, name, value)

    def _discard(self, name: str) -> None:
        d = self.__dict__
        d.pop(name, None)
        for key in ("_parameters", "_buffers", "_modules"):
            d[key].pop(name, None)
        d["_non_persistent"].discard(name)

    def __getattr__(self, name: str) -> Any:
        d = self.__dict__
        for key in ("_parameters", "_buffers", "_modules"):
            table = d.get(key)
            if table is not None and name in table:
                return table[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name: str) -> None:
        d = self.__dict__
        for key in ("_parameters", "_buffers", "_modules"):
            if name in d.get(key, ()):
                self._discard(name)
                return
        object.__delattr__(self, name)

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self._parameters) | set(self._buffers) | set(self._modules))

    def _check_name(self, what: str, name: Any) -> None:
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"{what}: call super().__init__() in {type(self).__name__}.__init__ first")
        if not isinstance(name, str) or not name or "." in name:
            raise KeyError(f"{what}: name must be a non-empty string without '.', got {name!r}")
        if name in self.__dict__ and name not in self._parameters and name not in self._buffers \
                and name not in self._modules:
            raise KeyError(f"{what}: attribute {name!r} already exists on {type(self).__name__}")

    def register_parameter(self, name: str, param: Parameter | None) -> None:
        """Add a parameter (or a ``None`` placeholder, e.g. ``bias=False``) under ``name``."""
        self._check_name("register_parameter", name)
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"register_parameter: {name!r} must be an ember.nn.Parameter or None, "
                            f"got {type(param).__name__}")
        self._discard(name)
        self._parameters[name] = param

    def register_buffer(self, name: str, tensor: Tensor | None, persistent: bool = True) -> None:
        """Add a tensor that is state but not learnable (e.g. BatchNorm's running mean).

        Non-persistent buffers are left out of ``state_dict``.
        """
        self._check_name("register_buffer", name)
        if tensor is not None and not isinstance(tensor, Tensor):
            raise TypeError(f"register_buffer: {name!r} must be a Tensor or None, got {type(tensor).__name__}")
        self._discard(name)
        self._buffers[name] = tensor
        if not persistent:
            self._non_persistent.add(name)

    def add_module(self, name: str, module: Module | None) -> None:
        """Add a child module under ``name``."""
        self._check_name("add_module", name)
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"add_module: {name!r} must be a Module or None, got {type(module).__name__}")
        self._discard(name)
        self._modules[name] = module

    register_module = add_module

    def get_submodule(self, target: str) -> Module:
        """The submodule at a dotted path such as ``"blocks.0.attn"``."""
        mod: Module = self
        for part in target.split(".") if target else []:
            child = mod._modules.get(part)
            if child is None:
                raise AttributeError(f"get_submodule: {type(mod).__name__} has no submodule {part!r} "
                                     f"(looking up {target!r})")
            mod = child
        return mod

    def get_parameter(self, target: str) -> Parameter:
        path, _, name = target.rpartition(".")
        mod = self.get_submodule(path)
        p = mod._parameters.get(name)
        if p is None:
            raise AttributeError(f"get_parameter: {type(mod).__name__} has no parameter {name!r}")
        return p

    # ------------------------------------------------------------------ traversal
    def named_modules(self, memo: set | None = None, prefix: str = "",
                      remove_duplicate: bool = True) -> Iterator[tuple[str, Module]]:
        """``(dotted name, module)`` for this module and every descendant, depth first, each once."""
        seen = set() if memo is None else memo
        stack: list[tuple[str, Module]] = [(prefix, self)]
        while stack:
            name, mod = stack.pop()
            if remove_duplicate:
                if id(mod) in seen:
                    continue
                seen.add(id(mod))
            yield name, mod
            children = [(f"{name}.{k}" if name else k, m) for k, m in mod._modules.items() if m is not None]
            stack.extend(reversed(children))

    def modules(self) -> Iterator[Module]:
        for _, m in self.named_modules():
            yield m

    def named_children(self) -> Iterator[tuple[str, Module]]:
        seen = set()
        for name, m in self._modules.items():
            if m is not None and id(m) not in seen:
                seen.add(id(m))
                yield name, m

    def children(self) -> Iterator[Module]:
        for _, m in self.named_children():
            yield m

    def _named_members(self, table: str, prefix: str, recurse: bool,
                       remove_duplicate: bool) -> Iterator[tuple[str, Tensor]]:
        mods = self.named_modules(prefix=prefix, remove_duplicate=remove_duplicate) if recurse else [(prefix, self)]
        seen: set[int] = set()
        for mod_name, mod in mods:
            for name, t in getattr(mod, table).items():
                if t is None:
                    continue
                if remove_duplicate:
                    if id(t) in seen:
                        continue
                    seen.add(id(t))
                yield (f"{mod_name}.{name}" if mod_name else name), t

    def named_parameters(self, prefix: str = "", recurse: bool = True,
                         remove_duplicate: bool = True) -> Iterator[tuple[str, Parameter]]:
        """``(dotted name, parameter)`` pairs; a parameter shared by two layers appears once."""
        yield from self._named_members("_parameters", prefix, recurse, remove_duplicate)  # type: ignore[misc]

    def parameters(self, recurse: bool = True) -> Iterator[Parameter]:
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix: str = "", recurse: bool = True,
                      remove_duplicate: bool = True) -> Iterator[tuple[str, Tensor]]:
        yield from self._named_members("_buffers", prefix, recurse, remove_duplicate)

    def buffers(self, recurse: bool = True) -> Iterator[Tensor]:
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    # ------------------------------------------------------------------ modes and bulk changes
    def train(self, mode: bool = True) -> Module:
        """Set training mode (dropout active, batch norm uses batch statistics) here and below."""
        if not isinstance(mode, bool):
            raise TypeError(f"train: mode must be a bool, got {type(mode).__name__}")
        for m in self.modules():
            m.__dict__["training"] = mode
        return self

    def eval(self) -> Module:
        """Evaluation mode: ``train(False)``."""
        return self.train(False)

    def requires_grad_(self, requires_grad: bool = True) -> Module:
        for p in self.parameters():
            p.requires_grad_(requires_grad)
        return self

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear every parameter's ``.grad`` (to None by default, as PyTorch 2 does)."""
        tracer = STATE.tracer
        for p in self.parameters():
            if tracer is not None:
                tracer.note_grad_reset(p)
            if p.grad is None:
                continue
            if set_to_none or not isinstance(p.grad, Tensor):
                p.grad = None
            else:
                p.grad = p.grad.detach()
                if tracer is not None:
                    with no_grad():
                        p.grad.zero_()
                else:
                    p.grad.data[...] = 0

    def apply(self, fn: Callable[[Module], Any]) -> Module:
        """Call ``fn`` on every submodule (children first) and on this module, like PyTorch."""
        for m in reversed(list(self.modules())):
            fn(m)
        return self

    def _convert(self, fn: Callable[[Tensor], Tensor]) -> Module:
        with no_grad():
            for m in self.modules():
                for table in (m._parameters, m._buffers):
                    for t in table.values():
                        if t is None:
                            continue
                        new = fn(t)
                        if new is t:
                            continue
                        # Change the tensor in place so optimizers and user references keep working.
                        t.data, t.dtype, t.device = new.data, new.dtype, new.device
                        t._version[0] += 1
                        if t.grad is not None and isinstance(t.grad, Tensor):
                            t.grad = fn(t.grad)
        return self

    def to(self, *args: Any, device: Any = None, dtype: Any = None) -> Module:
        """Move parameters and buffers to a device and/or cast floating ones to a dtype, in place."""
        for a in args:
            if isinstance(a, str) or (hasattr(a, "type") and hasattr(a, "index")):
                device = a
            else:
                dtype = a
        dev = to_device(device) if device is not None else None
        dt = _dt.to_dtype(dtype) if dtype is not None else None
        if dt is not None and not dt.is_floating_point:
            raise TypeError(f"Module.to: only floating dtypes are allowed, got {dt.name}")

        def convert(t: Tensor) -> Tensor:
            out = t
            if dev is not None and out.device != dev:
                out = out.to(dev)
            if dt is not None and out.dtype.is_floating_point and out.dtype is not dt:
                out = out.to(dt)
            return out

        return self._convert(convert)

    def cpu(self) -> Module:
        """Move parameters and buffers to the host, in place."""
        return self.to("cpu")

    def cuda(self, device: Any = None) -> Module:
        """Move parameters and buffers to a GPU in place (an index or ``'cuda:N'``; default: the current
        GPU). Parameter objects keep their identity, so an optimizer made before still updates them."""
        from ..tensor import _cuda_device
        return self.to(_cuda_device("Module.cuda", device))

    def float(self) -> Module:
        return self.to(dtype=_dt.float32)

    def double(self) -> Module:
        return self.to(dtype=_dt.float64)

    def half(self) -> Module:
        return self.to(dtype=_dt.float16)

    # ------------------------------------------------------------------ state
    def state_dict(self, destination: dict | None = None, prefix: str = "",
                   keep_vars: bool = False) -> dict[str, Tensor]:
        """Parameters and persistent buffers by dotted name. The tensors share storage with the module
        (detached unless ``keep_vars``); copy them if you need a snapshot."""
        out: dict[str, Tensor] = OrderedDict() if destination is None else destination
        for mod_name, mod in self.named_modules(prefix=prefix.rstrip(".")):
            dot = f"{mod_name}." if mod_name else ""
            for name, p in mod._parameters.items():
                if p is not None:
                    out[dot + name] = p if keep_vars else p.detach()
            for name, b in mod._buffers.items():
                if b is not None and name not in mod._non_persistent:
                    out[dot + name] = b if keep_vars else b.detach()
            extra = getattr(mod, "get_extra_state", None)
            if extra is not None:
                out[dot + "_extra_state"] = extra()
        return out

    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = True,
                        assign: bool = False) -> IncompatibleKeys:
        """Copy tensors from ``state_dict`` into this module's parameters and buffers, in place.

        With ``strict`` (the default) any missing or unexpected key is an error; a shape mismatch
        always is. The error lists every problem at once.
        """
        if not hasattr(state_dict, "items"):
            raise TypeError(f"load_state_dict: expected a dict of name -> Tensor, got {type(state_dict).__name__}")
        own = self.state_dict(keep_vars=True)
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        mismatched = []
        for k, target in own.items():
            if k not in state_dict or not isinstance(target, Tensor):
                continue
            src = state_dict[k]
            shape = tuple(src.shape) if hasattr(src, "shape") else None
            if shape != tuple(target.shape):
                mismatched.append(f"{k}: checkpoint has shape {shape}, the module has {tuple(target.shape)}")
        problems = []
        if mismatched:
            problems.append("wrongly shaped keys: " + "; ".join(mismatched))
        if strict and missing:
            problems.append("missing keys: " + ", ".join(missing))
        if strict and unexpected:
            problems.append("unexpected keys: " + ", ".join(unexpected))
        if problems:
            raise StateDictError(f"load_state_dict for {type(self).__name__}: " + ". ".join(problems))
        with no_grad():
            for mod_name, mod in self.named_modules():
                dot = f"{mod_name}." if mod_name else ""
                for table in (mod._parameters, mod._buffers):
                    for name, target in table.items():
                        key = dot + name
                        if target is None or key not in state_dict:
                            continue
                        _copy_into(target, state_dict[key], key, assign)
                setter = getattr(mod, "set_extra_state", None)
                if setter is not None and dot + "_extra_state" in state_dict:
                    setter(state_dict[dot + "_extra_state"])
        return IncompatibleKeys(missing, unexpected)

    # ------------------------------------------------------------------ calling
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} has no forward(); define forward() in the subclass")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        d = self.__dict__
        if STATE.tracer is not None:
            STATE.tracer.note_module(self)
        if d["_forward_pre_hooks"]:
            for hook in list(d["_forward_pre_hooks"].values()):
                r = hook(self, args)
                if r is not None:
                    args = r if isinstance(r, tuple) else (r,)
        out = self.forward(*args, **kwargs)
        if d["_forward_hooks"]:
            for hook in list(d["_forward_hooks"].values()):
                r = hook(self, args, out)
                if r is not None:
                    out = r
        return out

    def register_forward_pre_hook(self, hook: Callable) -> _RemovableHandle:
        """``hook(module, args)`` runs before ``forward``; a returned value replaces the args."""
        key = next(_hook_ids)
        self._forward_pre_hooks[key] = hook
        return _RemovableHandle(self._forward_pre_hooks, key)

    def register_forward_hook(self, hook: Callable) -> _RemovableHandle:
        """``hook(module, args, output)`` runs after ``forward``; a returned value replaces the output."""
        key = next(_hook_ids)
        self._forward_hooks[key] = hook
        return _RemovableHandle(self._forward_hooks, key)

    # ------------------------------------------------------------------ printing
    def extra_repr(self) -> str:
        """The text inside this module's parentheses in ``repr`` (override in layers)."""
        return ""

    def __repr__(self) -> str:
        lines = []
        extra = self.extra_repr()
        if extra:
            lines.extend(extra.split("\n"))
        for name, m in self._modules.items():
            child = repr(m).replace("\n", "\n  ")
            lines.append(f"({name}): {child}")
        if not lines:
            return f"{type(self).__name__}()"
        if len(lines) == 1 and not self._modules:
            return f"{type(self).__name__}({lines[0]})"
        return f"{type(self).__name__}(\n  " + "\n  ".join(lines) + "\n)"

    def compile(self, memory_budget: int | None = None) -> Any:
        """This module's call compiled with ``ember.jit``: traced per input signature, replayed after.

        Returns the compiled callable (the module itself is unchanged). Its outputs carry no autograd
        history; to train compiled, jit the whole step (forward, backward, optimizer) instead.
        """
        from ..graph import jit
        return jit(self, memory_budget=memory_budget, name=type(self).__name__)

    def num_parameters(self, trainable_only: bool = False) -> int:
        """The number of scalar parameters (each shared parameter counted once)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


def _copy_into(target: Tensor, src: Any, key: str, assign: bool) -> None:
    if isinstance(src, Tensor):
        arr = src.data
    else:
        arr = np.asarray(src)
    if tuple(arr.shape) != tuple(target.shape):  # checked above; kept for direct callers
        raise ShapeError(f"load_state_dict: {key}: shape {tuple(arr.shape)} does not match {tuple(target.shape)}")
    if assign and isinstance(src, Tensor):
        target.data, target.dtype, target.device = src.data, src.dtype, src.device
    elif target.device.type == "cpu":
        if isinstance(src, Tensor) and src.device.type != "cpu":
            arr = get_backend(src.device).to_numpy(arr)  # a GPU array has no implicit host conversion
        np.copyto(target.data, np.asarray(arr).astype(target.data.dtype, copy=False), casting="unsafe")
    else:  # through the target's backend: host data (or another GPU's) is copied over, then copied in place
        backend = get_backend(target.device)
        backend.xp.copyto(target.data, backend.asarray(arr, target.data.dtype), casting="unsafe")
    target._version[0] += 1
