"""Whether the tracked layers form a chain X -> T_1 -> T_2 -> ..., where the data-processing inequality holds.

In a chain each tracked layer is computed from the previous one only, so I(X;T_1) >= I(X;T_2) >= ... and
I(T_1;Y) >= I(T_2;Y) >= ... must hold, and an estimate that breaks it is an estimation error
(:func:`infoplane.bounds.chain_check`). A network with a skip connection (a layer that also consumes the output of
a layer before the previous one, or the input itself) is not a chain, and the inequality says nothing there.

:func:`is_chain` decides it from the model's ``torch.fx`` graph: T_{k+1} is computed from T_k only when every path
from the inputs to T_{k+1} passes through T_k, i.e. when T_{k+1} cannot be reached from the inputs once T_k is
taken out of the graph. A model that cannot be traced, or a tracked layer that is not exactly one module call in
the graph (a module called twice, a selector), leaves the question open (None): then the user may declare it
(``Tracker(chain=...)``).
"""
from __future__ import annotations

import warnings
from typing import Any, Optional, Sequence

from torch import nn

__all__ = ["is_chain", "chain_meta"]


def is_chain(model: nn.Module, layers: Sequence[str]) -> tuple[Optional[bool], str]:
    """Whether ``layers`` (module names, in model order) form a chain in ``model``'s traced graph.

    Parameters
    ----------
    model : nn.Module
    layers : sequence of str
        Tracked module names, in order.

    Returns
    -------
    is_chain : bool or None
        None when the graph does not tell (see the module docs).
    why : str
        One sentence: which layer bypasses which, or why the question stays open.
    """
    if len(layers) < 2:
        return None, "fewer than two tracked layers"
    try:
        import torch.fx

        tracked = set(layers)

        class _Tracer(torch.fx.Tracer):  # the tracked modules stay whole: one node each
            def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
                return qualname in tracked or super().is_leaf_module(m, qualname)

        with warnings.catch_warnings():  # fx's notes on what it cannot trace: the answer is None then
            warnings.simplefilter("ignore")
            graph = _Tracer().trace(model)
    except Exception as err:  # anything fx cannot trace (data-dependent control flow, ...): undecided
        return None, f"the model could not be traced with torch.fx ({type(err).__name__})"
    nodes = list(graph.nodes)
    where: dict[str, list[Any]] = {}
    for node in nodes:
        if node.op == "call_module":
            where.setdefault(str(node.target), []).append(node)
    for name in layers:
        if len(where.get(name, [])) != 1:
            return None, f"layer {name!r} is not exactly one module call in the traced graph"
    for before, after in zip(layers[:-1], layers[1:]):
        blocked = where[before][0]
        reached: set = set()
        for node in nodes:  # nodes come in topological order
            if node is blocked:
                continue
            if node.op == "placeholder" or any(a in reached for a in node.all_input_nodes):
                reached.add(node)
        if where[after][0] in reached:
            return False, (f"layer {after!r} is reached from the input without passing through {before!r} (a skip "
                           f"connection)")
    return True, "every tracked layer is computed from the previous one only"


def chain_meta(model: nn.Module, layers: Sequence[str], declared: Optional[bool],
               reduced: Optional[dict] = None) -> Optional[dict]:
    """``meta.json``'s ``chain``: whether the data-processing inequality applies to the tracked layers.

    Parameters
    ----------
    model : nn.Module
    layers : sequence of str
    declared : bool or None
        The user's ``chain=`` (wins over the graph); None: decided from the graph.
    reduced : dict, optional
        Layer name -> its reduction's description, for the layers estimated on a reduction that keeps part of the
        layer (channel means, projections). The inequality holds between the layers, not between parts of them:
        the next layer is computed from the whole of the one before, so reduced layers are not checked.

    Returns
    -------
    dict or None
        ``{"chain": bool or None, "source": "declared" | "graph", "why": str}``; None with fewer than two layers.
    """
    if declared is not None and not isinstance(declared, bool):
        raise TypeError(f"chain must be True, False or None (decide from the model's graph); got {declared!r}")
    if len(layers) < 2:
        return None
    if declared is not None:
        return {"chain": declared, "source": "declared", "why": "declared by the user"}
    if reduced:
        shown = ", ".join(f"{name} ({how})" for name, how in reduced.items())
        return {"chain": False, "source": "reduction",
                "why": f"the estimates are of reduced layers ({shown}); each layer is computed from the whole of the "
                       f"one before, not from its reduction, so the data-processing inequality does not bind them"}
    found, why = is_chain(model, layers)
    return {"chain": found, "source": "graph", "why": why}
