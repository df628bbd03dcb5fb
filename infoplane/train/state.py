"""Training state: what a checkpoint holds, how it is written and read, and the per-seed random streams.

A state is a plain dict (tensors, numbers, strings, lists, dicts), so ``torch.load(..., weights_only=True)``
reads it back. Each seed owns its random streams: a generator for the minibatch order and saved RNG states
for randomness inside ``forward`` (dropout), all derived from the seed, so training never touches torch's
global RNG and a resumed run continues exactly.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from infoplane.runs.writer import atomic_write_bytes

__all__ = ["STATE_FORMAT", "save_state", "load_state"]

#: Tag stored in every state dict so that ``fit`` can tell a training state from other files.
STATE_FORMAT = "infoplane-fit-state/1"

def save_state(path: str | os.PathLike, state: dict) -> Path:
    """Write a training state atomically (a temporary file in the same folder, then a rename).

    Parameters
    ----------
    path : path-like
    state : dict
        ``FitResult.state`` or the argument of a ``checkpoint`` call. It holds only tensors,
        numbers, strings, lists and dicts, so ``load_state`` can read it with ``weights_only=True``.

    Returns
    -------
    pathlib.Path
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def load_state(path: str | os.PathLike) -> dict:
    """Read a state written by ``save_state`` (tensors land on the CPU; ``fit`` moves them).

    Parameters
    ----------
    path : path-like

    Returns
    -------
    dict
        Pass it to ``fit(..., state=...)`` to continue training.
    """
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"{path} is not an infoplane training state (expected format {STATE_FORMAT!r})")
    return state


def snapshot(epoch: int, seeds: Sequence[int], engine: Any, generators: Sequence[torch.Generator],
              rngs: Sequence[dict]) -> dict:
    """The training state after ``epoch`` completed epochs (copies: training may go on)."""
    opt_states = engine.optimizer_states()
    return {
        "format": STATE_FORMAT,
        "epoch": epoch,
        "seeds": list(seeds),
        "members": [
            {
                "seed": s,
                "params": {k: v.detach().clone() for k, v in m.named_parameters()},
                "buffers": {k: v.detach().clone() for k, v in m.named_buffers()},
                "optimizer": opt,
                "generator": gen.get_state(),
                "rng": rng,
            }
            for s, m, opt, gen, rng in zip(seeds, engine.members, opt_states, generators, rngs)
        ],
    }


def restore(state: dict, engine: Any, generators: Sequence[torch.Generator]) -> list[dict]:
    """Load ``state`` into the engine's members, optimisers and the batch-order generators; return the RNG states."""
    for member, saved, gen in zip(engine.members, state["members"], generators):
        _load_tensors(member, saved)
        gen.set_state(saved["generator"])
    rngs = [saved["rng"] for saved in state["members"]]
    engine.load_optimizer_states([saved["optimizer"] for saved in state["members"]])
    return rngs


def check_state(state: Any, seeds: Sequence[int]) -> None:
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"state is not an infoplane training state (expected format {STATE_FORMAT!r})")
    if list(state["seeds"]) != list(seeds):
        raise ValueError(f"state holds seeds {state['seeds']}, but fit was asked for {seeds}")


def _load_tensors(member: nn.Module, saved: dict) -> None:
    own = {**dict(member.named_parameters()), **dict(member.named_buffers())}
    given = {**saved["params"], **saved["buffers"]}
    if own.keys() != given.keys() or any(own[k].shape != given[k].shape for k in own):
        raise ValueError("the state does not match the model: parameter names or shapes differ")
    with torch.no_grad():
        for k, t in given.items():
            own[k].copy_(t)



def derive_seed(seed: int, stream: int) -> int:
    """A 63-bit seed for one random stream of a member, independent of the other streams."""
    return int(np.random.SeedSequence([seed, stream]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def cuda_devices(device: torch.device) -> list[int]:
    return [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []


def get_rng(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def initial_rng(seed: int, device: torch.device) -> dict:
    # Private generators: torch.manual_seed would also reseed every CUDA device, not only the one restored.
    x = derive_seed(seed, 2)
    state = {"cpu": torch.Generator().manual_seed(x).get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.Generator(device=device).manual_seed(x).get_state()
    return state

