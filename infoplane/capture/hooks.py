"""Forward hooks: which layers to record, and the probe pass that records them.

Hooks live only for the duration of one forward pass over the probe set (a ``try/finally`` removes them), so a
tracked model carries no hooks while it trains and none survive an exception.

Probe inputs may be one tensor, several positional tensors or keyword tensors (see :mod:`infoplane.data.probeset`);
a layer may be read through a selector (a callable on the module's output, or a named pooling of a token
sequence), which is how tuple outputs (LSTMs, attention blocks) and ``[N, L, d]`` sequences are recorded.
"""
from __future__ import annotations

import fnmatch
import warnings
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch
from torch import nn

from infoplane.data import probeset
from infoplane.data.labels import as_class_indices
from infoplane.data.probeset import ProbeInputs

__all__ = ["Layer", "ACTIVATIONS", "PARAMETRIC", "POOLINGS", "resolve_layers", "weight_names", "probe", "model_device",
           "as_probe_tensors"]

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

#: Parameter-free or normalising module types that sit between layers; the default choice passes over them
#: without mentioning them.
_PASSIVE = (
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout, nn.Identity,
    nn.Flatten, nn.Unflatten, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm,
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LocalResponseNorm, nn.MaxPool1d, nn.MaxPool2d,
    nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)

#: Named poolings a layer selector may give: the first token, the mean over tokens (respecting the probe
#: inputs' ``attention_mask``), or every value flattened.
POOLINGS = ("cls", "mean", "flatten")

# Skip warnings already given in this process (the default choice "warns once" per distinct message).
_WARNED: set[str] = set()

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
    pool : str or None
        Named pooling of the output (``"cls"``, ``"mean"``, ``"flatten"``), or None.
    select : callable or None
        Applied to the module's raw output before pooling (e.g. ``lambda out: out[0]`` for an LSTM).
    """

    name: str
    width: int
    kind: str
    transform: str | None
    module_type: str
    pool: str | None = None
    select: object = field(default=None, compare=False, repr=False)
    #: Per-sample shape of the recorded tensor, e.g. (C, H, W), for layer reductions; not in equality or to_json.
    shape: tuple | None = field(default=None, compare=False)

    def to_json(self) -> dict:
        out = {"name": self.name, "width": self.width, "kind": self.kind, "transform": self.transform,
               "module": self.module_type}
        # Only selected layers carry these keys, so that the meta.json of plain runs stays as it was.
        if self.pool is not None:
            out["pool"] = self.pool
        if self.select is not None:
            out["select"] = getattr(self.select, "__qualname__", type(self.select).__name__)
        return out


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a model without either)."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def as_probe_tensors(inputs: Any, labels: Any) -> tuple[ProbeInputs, torch.Tensor]:
    """Validate and convert the probe set.

    Parameters
    ----------
    inputs : tensor or array [N, ...], tuple/list of tensors (``model(*inputs)``), dict of tensors
        (``model(**inputs)``), or a DataLoader / iterable of ``(inputs, labels)`` batches in a fixed order
        (then ``labels`` is None)
    labels : tensor, array or sequence, shape [N] (or one-hot [N, C]), or None with a loader
        Class per sample, under the rules of :mod:`infoplane.data.labels`.

    Returns
    -------
    inputs : tensor, tuple of tensors or dict of tensors (leading dimension N)
    labels : int64 CPU tensor
    """
    inputs, labels, n = probeset.as_probe_set(inputs, labels)
    labels = as_class_indices(labels).indices.cpu()
    if labels.shape[0] != n:
        raise ValueError(f"labels do not match inputs: {labels.shape[0]} labels for {n} input "
                         f"samples; pass one label per probe sample")
    return inputs, labels


def _first_tensor(output):
    """The tensor a named pooling reads: the output itself, or the first element of a tuple / list / Hugging
    Face ``ModelOutput`` (the convention of PyTorch's RNNs and of transformer blocks)."""
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "to_tuple"):
        output = output.to_tuple()
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return output


def _apply_selector(output, layer_name, pool, select, mask):
    """The flattened ``[n, width]`` view of a module's output, read through the layer's selector."""
    out = select(output) if select is not None else (_first_tensor(output) if pool else output)
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"layer {layer_name!r} gives a {type(out).__name__}, not a tensor; read it through a "
                         f"selector, e.g. layers={{{layer_name!r}: lambda out: out[0]}} or a pooling "
                         f"{list(POOLINGS)}")
    if pool in ("cls", "mean"):
        if out.ndim < 3:
            raise ValueError(f"layer {layer_name!r}: pooling {pool!r} needs a token sequence [N, L, d], got shape "
                             f"{tuple(out.shape)}; use 'flatten' or no pooling")
        if pool == "cls":
            out = out[:, 0]
        elif mask is not None and tuple(mask.shape) == tuple(out.shape[:2]):
            # Padding tokens carry no input information: average over the real tokens only.
            w = mask.to(out.dtype).reshape(*mask.shape, *([1] * (out.ndim - 2)))
            out = (out * w).sum(1) / w.sum(1).clamp_min(1)
        else:
            out = out.mean(1)
    return out


def _trace(model, example, device):
    """Run one forward pass on a few samples, recording the order in which modules finish and their outputs.
    Returns ``(calls, outputs)``: a list of module names in completion order (a name repeats when the module
    runs several times) and a dict name -> the module's first output (detached)."""
    names = {m: n for n, m in model.named_modules() if n}
    calls, outputs = [], {}

    def hook(module, args, output):
        name = names[module]
        calls.append(name)
        outputs.setdefault(name, output)

    handles = []
    flags = [(m, m.training) for m in model.modules()]
    try:
        for m in names:
            handles.append(m.register_forward_hook(hook))
        model.eval()
        with torch.no_grad():
            try:
                probeset.call_model(model, probeset.to_device(example, device))
            except Exception as e:
                raise ValueError(
                    f"the model cannot take the probe inputs ({probeset.describe_sample(example)} per sample): "
                    f"{type(e).__name__}: {e}"
                ) from e
    finally:
        for h in handles:
            h.remove()
        for m, flag in flags:
            m.training = flag
    return calls, outputs


def _is_sample_tensor(output, n):
    return isinstance(output, torch.Tensor) and output.ndim >= 1 and output.shape[0] == n


def _default_layers(model, calls, pre_activation, outputs=None, n=None):
    """Default choice over leaf modules in execution order: each parametric layer's output after the
    nonlinearity that follows it (or its own output when the nonlinearity is functional), and the last
    parametric layer as output probabilities. Returns ``(chosen, skipped)``, skipped being
    ``[(name, reason)]`` for the modules the choice passes over that a user may have wanted."""
    modules = dict(model.named_modules())
    leaves = [n_ for n_ in calls if not any(True for _ in modules[n_].children())]
    chosen = []  # (name, kind, transform)
    skipped = {}
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
        elif outputs is not None and name not in skipped:
            if not _is_sample_tensor(outputs.get(name), n):
                skipped[name] = (f"{type(m).__name__} returns a {type(outputs.get(name)).__name__}, not one tensor "
                                 f"[N, ...]; record it with layers={{{name!r}: lambda out: out[0]}}")
            elif isinstance(m, ACTIVATIONS):
                if not pre_activation:
                    skipped[name] = f"{type(m).__name__} follows no Linear/Conv layer"
            elif not isinstance(m, _PASSIVE):
                skipped[name] = f"{type(m).__name__} is not a Linear/Conv layer or a nonlinearity"
    if pre_activation or not chosen and pending is None:
        return chosen, list(skipped.items())
    # The network's output: the last parametric layer, read as class probabilities.
    if pending is not None:
        return chosen + [(pending, "output", "auto")], list(skipped.items())
    last_name = chosen[-1][0]
    last = modules[last_name]
    if isinstance(last, nn.LogSoftmax):
        chosen[-1] = (last_name, "output", "exp")
    else:
        chosen[-1] = (last_name, "output", None)
    return chosen, list(skipped.items())


def _check_selector(name, selector):
    if selector is None or callable(selector):
        return selector
    if isinstance(selector, str) and selector in POOLINGS:
        return selector
    raise ValueError(f"layers[{name!r}] must be a callable applied to the module's output (e.g. "
                     f"lambda out: out[0]) or a pooling in {list(POOLINGS)}; got {selector!r}")


def _explicit_layers(model, calls, layers):
    """Explicit choice: names, globs or module types, or a dict from those to selectors. Returns
    ``[(name, kind, transform, pool, select)]`` in execution order."""
    modules = dict(model.named_modules())
    valid = [n for n in dict.fromkeys(calls)]
    if isinstance(layers, dict):
        items = [(sel, _check_selector(sel, how)) for sel, how in layers.items()]
    else:
        if isinstance(layers, (str, type)):
            layers = [layers]
        items = [(sel, None) for sel in layers]
    picked = {}
    for sel, how in items:
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
        for n in hits:
            picked.setdefault(n, how)
    order = {n: i for i, n in enumerate(valid)}
    out = []
    for n in sorted(picked, key=order.__getitem__):
        how = picked[n]
        pool = how if isinstance(how, str) else None
        select = how if callable(how) else None
        out.append((n, "selected", None, pool, select))
    return out


def _warn_skipped(model, skipped):
    if not skipped:
        return
    lines = "; ".join(f"{name!r} ({why})" for name, why in skipped)
    message = (f"infoplane: the default layer choice for {type(model).__name__} skips {len(skipped)} module(s): "
               f"{lines}. Pass layers= to record them.")
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message, UserWarning, stacklevel=3)


def resolve_layers(model: nn.Module, example: ProbeInputs, layers: Any = None, pre_activation: bool = False,
                   device: Optional[torch.device] = None) -> list[Layer]:
    """Choose the layers to record.

    Parameters
    ----------
    model : nn.Module
    example : tensor, tuple of tensors or dict of tensors, leading dimension n
        A few probe samples; one forward pass on them finds the execution order and the layer widths (and
        shows early whether the model can take the inputs).
    layers : None, str, type, list of str / type, or dict
        None picks every hidden layer after its nonlinearity plus the output as probabilities (and warns once,
        naming the modules it passes over and why); otherwise exact module names, glob patterns
        (``"encoder.*"``) or module types, whose raw outputs are recorded. A dict maps such names to a
        selector: a callable applied to the module's output (``lambda out: out[0]`` for an LSTM), or a named
        pooling of a token sequence ``[N, L, d]``: ``"cls"`` (first token), ``"mean"`` (over tokens, respecting
        the inputs' ``attention_mask``) or ``"flatten"``; None keeps the raw output. A named pooling of a tuple
        output reads its first element.
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
    n = probeset.n_samples(example)
    calls, outputs = _trace(model, example, device)
    if layers is None:
        chosen, skipped = _default_layers(model, calls, pre_activation, outputs, n)
        if not chosen:
            raise ValueError("no layer to record: the model has no Linear/Conv layer that runs in its forward "
                             "pass; pass layers= with module names, patterns or types")
        _warn_skipped(model, skipped)
        chosen = [(name, kind, transform, None, None) for name, kind, transform in chosen]
    else:
        if pre_activation:
            raise ValueError("pre_activation=True only applies to the default layer choice (layers=None); "
                             "with explicit layers, name the Linear/Conv modules themselves")
        if isinstance(layers, (list, tuple, dict)) and len(layers) == 0:
            raise ValueError("layers is empty: pass None for the default choice, or at least one name, "
                             "pattern or type")
        chosen = _explicit_layers(model, calls, layers)
    modules = dict(model.named_modules())
    mask = probeset.attention_mask(example)
    out = []
    for name, kind, transform, pool, select in chosen:
        n_calls = calls.count(name)
        if n_calls != 1:
            raise ValueError(f"module {name!r} runs {n_calls} times per forward pass, so its output is not one "
                             f"layer; give each layer its own module or choose layers= explicitly")
        output = outputs[name]
        if pool is None and select is None and not _is_sample_tensor(output, n):
            raise ValueError(f"layer {name!r} does not return one tensor with a leading sample dimension "
                             f"(it returns a {type(output).__name__}); read it through a selector, e.g. "
                             f"layers={{{name!r}: lambda out: out[0]}}, or a pooling {list(POOLINGS)}")
        try:
            t = _apply_selector(output, name, pool, select, None if mask is None else mask.to(device))
        except (ValueError, TypeError):
            raise
        except Exception as e:
            raise ValueError(f"the selector of layer {name!r} fails on the module's output: "
                             f"{type(e).__name__}: {e}") from e
        if not _is_sample_tensor(t, n):
            raise ValueError(f"layer {name!r} read through its selector gives shape {tuple(t.shape)}, not a "
                             f"tensor with the leading sample dimension {n}")
        width = int(t[0].numel())
        if transform == "auto":
            transform = "sigmoid" if width == 1 else "softmax"
        # The recorded tensor's per-sample shape (after any selector), which reductions such as channel-mean need.
        shape = (width,) if transform is not None else tuple(t.shape[1:])
        out.append(Layer(name, width, kind, transform, type(modules[name]).__name__, pool, select, shape))
    return out



def weight_names(model: nn.Module, example: ProbeInputs, layer_names: Sequence[str]) -> dict[str, list[str]]:
    """The weights that produce each recorded layer, as parameter names of ``model``.

    A layer that holds weights itself (a Linear, a block) is described by them (every parameter with at least
    two dimensions in it and its submodules); a parameter-free layer (an activation) by the weights of the
    modules that ran after the previous recorded layer and before it (the Linear that feeds a Tanh).

    Parameters
    ----------
    model : nn.Module
    example : tensor, tuple of tensors or dict of tensors
        A few probe samples, for one forward pass that gives the execution order.
    layer_names : sequence of str
        Recorded module names (as :func:`resolve_layers` gives them).

    Returns
    -------
    dict of str to list of str
        Per layer, parameter names in ``model.named_parameters()`` spelling (empty for a layer no weight feeds).
    """
    calls, _ = _trace(model, example, model_device(model))
    modules = dict(model.named_modules())
    names = {id(p): n for n, p in model.named_parameters()}  # a tied weight under its first name

    def weights(name, recurse):
        return [names[id(p)] for p in modules[name].parameters(recurse=recurse) if p.ndim >= 2 and id(p) in names]

    first: dict[str, int] = {}
    for i, name in enumerate(calls):
        first.setdefault(name, i)
    order = sorted(layer_names, key=lambda n: first.get(n, len(calls)))
    out: dict[str, list[str]] = {}
    previous = -1
    for name in order:
        at = first.get(name)
        if at is None:
            out[name] = []
            continue
        own = weights(name, recurse=True)
        if not own:
            own = [w for n in calls[previous + 1:at] for w in weights(n, recurse=False)]
        out[name] = list(dict.fromkeys(own))
        previous = at
    return {name: out[name] for name in layer_names}


def probe(model: nn.Module, inputs: ProbeInputs, layers: Sequence[Layer], batch_size: int = 4096,
          device: Optional[torch.device] = None, epoch: Optional[int] = None) -> dict[str, torch.Tensor]:
    """Run the probe set through the model and return the chosen layers' activations.

    The model runs in eval mode under ``torch.no_grad``; every module's ``training`` flag is restored and the
    hooks are removed afterwards, whatever happens. No random numbers are drawn and no state changes, so
    training proceeds exactly as without tracking.

    Parameters
    ----------
    model : nn.Module
    inputs : tensor [N, ...], tuple of tensors or dict of tensors (see :mod:`infoplane.data.probeset`)
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
    store: dict[str, list[torch.Tensor]] = {layer.name: [] for layer in layers}
    handles = []
    current = {"mask": None}  # the attention mask of the batch being probed, for "mean" pooling

    def make_hook(layer):
        fn = _TRANSFORMS[layer.transform]

        def hook(module, args, output):
            if layer.pool is None and layer.select is None:
                out = output.detach()
            else:
                out = _apply_selector(output, layer.name, layer.pool, layer.select, current["mask"]).detach()
            store[layer.name].append(fn(out.reshape(out.shape[0], -1).float()))
        return hook

    n = probeset.n_samples(inputs)
    flags = [(m, m.training) for m in model.modules()]
    try:
        for layer in layers:
            handles.append(modules[layer.name].register_forward_hook(make_hook(layer)))
        model.eval()
        with torch.no_grad():
            for start in range(0, n, batch_size):
                batch = probeset.to_device(probeset.take(inputs, start, start + batch_size), device)
                current["mask"] = probeset.attention_mask(batch)
                probeset.call_model(model, batch)
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
        if t.shape != (n, layer.width):
            where = "" if epoch is None else f" at epoch {epoch}"
            raise ValueError(f"layer {layer.name!r} gave activations of shape {tuple(t.shape)}{where}, expected "
                             f"{(n, layer.width)}")
        acts[layer.name] = t
    return acts
