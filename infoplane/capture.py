"""Forward hooks: which layers to record, and the probe pass that records them.

Hooks live only for the duration of one forward pass over the probe set (a ``try/finally`` removes them), so a
tracked model carries no hooks while it trains and none survive an exception.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import torch
from torch import nn

from .labels import as_class_indices

__all__ = ["Layer", "ACTIVATIONS", "PARAMETRIC", "resolve_layers", "probe", "model_device", "as_probe_tensors"]

#: Module types counted as a layer's nonlinearity when choosing layers by default.
ACTIVATIONS = (
    nn.Tanh, nn.ReLU, nn.ReLU6, nn.Sigmoid, nn.GELU, nn.ELU, nn.SELU, nn.CELU, nn.LeakyReLU, nn.PReLU, nn.RReLU,
    nn.SiLU, nn.Mish, nn.Softplus, nn.Softsign, nn.Hardtanh, nn.Hardsigmoid, nn.Hardswish, nn.LogSigmoid,
    nn.Tanhshrink, nn.Softshrink, nn.Hardshrink, nn.Threshold, nn.GLU, nn.Softmax, nn.LogSoftmax,
)

#: Module types that make a new layer (their output is a layer's pre-activation).
PARAMETRIC = (
    nn.Linear, nn.Bilinear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)

_TRANSFORMS = {
    None: lambda t: t,
    "softmax": lambda t: torch.softmax(t, dim=-1),
    "sigmoid": torch.sigmoid,
    "exp": torch.exp,
}


@dataclass
class Layer:
    """One recorded layer.

    Attributes
    ----------
    name : str
        Module path in the model (``"3"``, ``"encoder.1"``).
    width : int
        Number of features per sample after flattening.
    kind : str
        ``"hidden"`` (after its nonlinearity), ``"pre-activation"``, ``"output"`` (probabilities) or
        ``"selected"`` (chosen by the caller, raw output).
    transform : str or None
        Applied to the flattened output: ``"softmax"``, ``"sigmoid"``, ``"exp"`` (after a LogSoftmax) or None.
    module_type : str
        Class name of the hooked module.
    """

    name: str
    width: int
    kind: str
    transform: str | None
    module_type: str
    #: Per-sample output shape, e.g. (C, H, W) (issue 10: layer reductions); not part of equality or to_json.
    shape: tuple = field(default=None, compare=False)

    def to_json(self):
        return {"name": self.name, "width": self.width, "kind": self.kind, "transform": self.transform,
                "module": self.module_type}


def model_device(model):
    """The device of the model's first parameter or buffer (CPU for a model without either)."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def as_probe_tensors(inputs, labels):
    """Validate and convert the probe set.

    Parameters
    ----------
    inputs : tensor or array, shape [N, ...]
    labels : tensor, array or sequence, shape [N] (or one-hot [N, C])
        Class per sample, under the rules of :mod:`infoplane.labels`.

    Returns
    -------
    inputs : tensor
    labels : int64 CPU tensor
    """
    if not isinstance(inputs, torch.Tensor):
        try:
            inputs = torch.as_tensor(inputs)
        except Exception as e:
            raise TypeError(f"inputs must be a tensor or an array, got {type(inputs).__name__}: {e}") from None
    if inputs.ndim == 0 or inputs.shape[0] == 0:
        raise ValueError(f"inputs must have a leading sample dimension with at least one sample, "
                         f"got shape {tuple(inputs.shape)}")
    labels = as_class_indices(labels).indices.cpu()
    if labels.shape[0] != inputs.shape[0]:
        raise ValueError(f"labels do not match inputs: {labels.shape[0]} labels for {inputs.shape[0]} input "
                         f"samples; pass one label per probe sample")
    return inputs, labels


def _trace(model, example, device):
    """Run one forward pass on a few samples, recording the order in which modules finish and their outputs'
    shapes. Returns ``(calls, names)``: a list of module names in completion order (a name repeats when the
    module runs several times), a dict name -> flattened width or None for non-tensor output, and a dict
    name -> per-sample output shape (tensor outputs only)."""
    names = {m: n for n, m in model.named_modules() if n}
    calls, widths = [], {}
    shapes = {}  # issue 10: per-sample output shapes, for layer reductions

    def hook(module, args, output):
        name = names[module]
        calls.append(name)
        if isinstance(output, torch.Tensor) and output.ndim >= 1 and output.shape[0] == example.shape[0]:
            widths[name] = int(output[0].numel())
            shapes[name] = tuple(output.shape[1:])
        else:
            widths[name] = None

    handles = []
    flags = [(m, m.training) for m in model.modules()]
    try:
        for m in names:
            handles.append(m.register_forward_hook(hook))
        model.eval()
        with torch.no_grad():
            try:
                model(example.to(device))
            except Exception as e:
                raise ValueError(
                    f"the model cannot take the probe inputs (shape {tuple(example.shape[1:])} per sample, "
                    f"dtype {example.dtype}): {type(e).__name__}: {e}"
                ) from e
    finally:
        for h in handles:
            h.remove()
        for m, flag in flags:
            m.training = flag
    return calls, widths, shapes


def _default_layers(model, calls, pre_activation):
    """Default choice over leaf modules in execution order: each parametric layer's output after the
    nonlinearity that follows it (or its own output when the nonlinearity is functional), and the last
    parametric layer as output probabilities."""
    modules = dict(model.named_modules())
    leaves = [n for n in calls if not any(True for _ in modules[n].children())]
    chosen = []  # (name, kind, transform)
    pending = None  # last parametric layer still waiting for its nonlinearity
    for name in leaves:
        m = modules[name]
        if isinstance(m, PARAMETRIC):
            if pre_activation:
                chosen.append((name, "pre-activation", None))
            elif pending is not None:
                chosen.append((pending, "hidden", None))
            pending = name
        elif isinstance(m, ACTIVATIONS) and pending is not None and not pre_activation:
            chosen.append((name, "hidden", None))
            pending = None
    if pre_activation or not chosen and pending is None:
        return chosen
    # The network's output: the last parametric layer, read as class probabilities.
    if pending is not None:
        return chosen + [(pending, "output", "auto")]
    last_name = chosen[-1][0]
    last = modules[last_name]
    if isinstance(last, nn.LogSoftmax):
        chosen[-1] = (last_name, "output", "exp")
    else:
        chosen[-1] = (last_name, "output", None)
    return chosen


def _explicit_layers(model, calls, layers):
    modules = dict(model.named_modules())
    valid = [n for n in dict.fromkeys(calls)]
    if isinstance(layers, (str, type)):
        layers = [layers]
    picked = []
    for sel in layers:
        if isinstance(sel, type) or (isinstance(sel, tuple) and all(isinstance(t, type) for t in sel)):
            hits = [n for n in valid if isinstance(modules[n], sel)]
            what = f"module type {sel.__name__ if isinstance(sel, type) else sel}"
        elif isinstance(sel, str):
            if sel in modules and sel:
                if sel not in valid:
                    raise ValueError(f"layer {sel!r} exists but does not run in the model's forward pass; "
                                     f"layers that run: {valid}")
                hits = [sel]
            else:
                hits = [n for n in valid if fnmatch.fnmatchcase(n, sel)]
            what = f"name or pattern {sel!r}"
        else:
            raise TypeError(f"layers must be names, glob patterns or module types, got {sel!r}")
        if not hits:
            raise ValueError(f"{what} matches no layer; valid layer names: {valid}")
        picked.extend(hits)
    order = {n: i for i, n in enumerate(valid)}
    return [(n, "selected", None) for n in sorted(dict.fromkeys(picked), key=order.__getitem__)]


def resolve_layers(model, example, layers=None, pre_activation=False, device=None):
    """Choose the layers to record.

    Parameters
    ----------
    model : nn.Module
    example : tensor, shape [n, ...]
        A few probe samples; one forward pass on them finds the execution order and the layer widths (and
        shows early whether the model can take the inputs).
    layers : None, str, type, or list of str / type
        None picks every hidden layer after its nonlinearity plus the output as probabilities; otherwise exact
        module names, glob patterns (``"encoder.*"``) or module types, whose raw outputs are recorded.
    pre_activation : bool
        With ``layers=None``, record every Linear/Conv output instead (the last one gives the logits).
    device : torch.device or None
        Where the forward pass runs; None = the model's device.

    Returns
    -------
    list of Layer
        In execution order.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    device = model_device(model) if device is None else torch.device(device)
    calls, widths, shapes = _trace(model, example, device)
    if layers is None:
        chosen = _default_layers(model, calls, pre_activation)
        if not chosen:
            raise ValueError("no layer to record: the model has no Linear/Conv layer that runs in its forward "
                             "pass; pass layers= with module names, patterns or types")
    else:
        if pre_activation:
            raise ValueError("pre_activation=True only applies to the default layer choice (layers=None); "
                             "with explicit layers, name the Linear/Conv modules themselves")
        if isinstance(layers, (list, tuple)) and len(layers) == 0:
            raise ValueError("layers is empty: pass None for the default choice, or at least one name, "
                             "pattern or type")
        chosen = _explicit_layers(model, calls, layers)
    modules = dict(model.named_modules())
    out = []
    for name, kind, transform in chosen:
        n_calls = calls.count(name)
        if n_calls != 1:
            raise ValueError(f"module {name!r} runs {n_calls} times per forward pass, so its output is not one "
                             f"layer; give each layer its own module or choose layers= explicitly")
        width = widths[name]
        if width is None:
            raise ValueError(f"layer {name!r} does not return one tensor with a leading sample dimension; "
                             f"choose another module")
        if transform == "auto":
            transform = "sigmoid" if width == 1 else "softmax"
        shape = (width,) if transform is not None else shapes.get(name)  # issue 10
        out.append(Layer(name, width, kind, transform, type(modules[name]).__name__, shape))
    return out


def probe(model, inputs, layers, batch_size=4096, device=None, epoch=None):
    """Run the probe set through the model and return the chosen layers' activations.

    The model runs in eval mode under ``torch.no_grad``; every module's ``training`` flag is restored and the
    hooks are removed afterwards, whatever happens. No random numbers are drawn and no state changes, so
    training proceeds exactly as without tracking.

    Parameters
    ----------
    model : nn.Module
    inputs : tensor, shape [N, ...]
    layers : list of Layer
    batch_size : int
        Probe samples per forward pass.
    device : torch.device or None
        Where the forward pass runs (inputs are moved there); None = the model's device.
    epoch : int or None
        Only used in error messages.

    Returns
    -------
    dict
        Layer name -> float32 tensor [N, width], on the device where the model computed it.
    """
    device = model_device(model) if device is None else torch.device(device)
    modules = dict(model.named_modules())
    store = {layer.name: [] for layer in layers}
    handles = []

    def make_hook(layer):
        fn = _TRANSFORMS[layer.transform]

        def hook(module, args, output):
            out = output.detach()
            store[layer.name].append(fn(out.reshape(out.shape[0], -1).float()))
        return hook

    flags = [(m, m.training) for m in model.modules()]
    try:
        for layer in layers:
            handles.append(modules[layer.name].register_forward_hook(make_hook(layer)))
        model.eval()
        with torch.no_grad():
            for start in range(0, inputs.shape[0], batch_size):
                model(inputs[start:start + batch_size].to(device))
    finally:
        for h in handles:
            h.remove()
        for m, flag in flags:
            m.training = flag
    acts = {}
    for layer in layers:
        if not store[layer.name]:
            where = "" if epoch is None else f" at epoch {epoch}"
            raise ValueError(f"layer {layer.name!r} did not run during the probe pass{where}; a forward that skips "
                             f"layers depending on the input cannot be tracked there: choose other layers")
        t = torch.cat(store[layer.name]) if len(store[layer.name]) > 1 else store[layer.name][0]
        if t.shape != (inputs.shape[0], layer.width):
            where = "" if epoch is None else f" at epoch {epoch}"
            raise ValueError(f"layer {layer.name!r} gave activations of shape {tuple(t.shape)}{where}, expected "
                             f"{(inputs.shape[0], layer.width)}")
        acts[layer.name] = t
    return acts
