"""Any network by ``_target_``: a user's own module, torchvision's classifiers by name, and
bnsweep's own, with the ``bn=`` choice put into each (REFERENCES.md §10).

Between ``bnsweep.nn`` (plain torch) and the run: nothing in ``bnsweep.nn`` knows this module.
What bnsweep needs of a network it reads from the module itself (its normalisation layers by
type, its Conv/Linear layers, their qualified names), never from a list kept by hand.

How the ``bn=`` choice reaches a network:

- a constructor that takes ``norm`` (bnsweep's nets, the user's) or ``norm_layer`` (torchvision,
  timm) gets the norm factory, which it calls as ``norm(num_features)`` (bnsweep's own nets also
  say ``spatial``);
- torch's own ``BatchNorm1d/2d/3d`` and ``SyncBatchNorm`` left in the built network are swapped
  for the choice (``bnsweep.nn.swap``), unless ``bn=torch`` or ``model.convert_bn=false``.

Errors of the user's code (an import, the constructor) become one line naming their exception
and their ``file:line`` (``NetworkError``).
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
import sysconfig
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torch import nn

from bnsweep.nn.swap import swap_batchnorms

# keys of a model config that are bnsweep's, not the constructor's
OWN_KEYS = ("convert_bn",)
# the bn option that keeps torch's layers as the network builds them
TORCH_BN_TARGET = "bnsweep.nn.make_torch_batchnorm"


class NetworkError(ValueError):
    """The network cannot be built or fails its pre-flight step; one line, naming the user's
    exception and where in their code it was raised."""


def where(e: BaseException) -> str:
    """``file:line (function)`` of the deepest frame of ``e``'s traceback in the network's
    code: the user's own (not Python's library, an installed package or bnsweep), else an
    installed package's other than torch (torchvision's models), else bnsweep's; '' where
    there is none."""
    import torch

    frames = traceback.extract_tb(e.__traceback__)
    paths = sysconfig.get_paths()
    packages = {Path(paths[k]).resolve() for k in ("purelib", "platlib")}
    libraries = {Path(paths["stdlib"]).resolve(), *packages}
    plumbing = {Path(torch.__file__).resolve().parent, Path(__file__).resolve().parents[1],
                Path(paths["stdlib"]).resolve()}  # fmt: skip

    def within(f: traceback.FrameSummary, roots: set[Path]) -> bool:
        return any(Path(f.filename).resolve().is_relative_to(root) for root in roots)

    for chosen in ([f for f in frames if not within(f, libraries | plumbing)],
                   [f for f in frames if not within(f, plumbing)],
                   frames):  # fmt: skip
        if chosen:
            f = chosen[-1]
            return f"{_short(f.filename, packages)}:{f.lineno} ({f.name})"
    return ""


def _short(path: str, packages: set[Path]) -> str:
    """A package's file from its package folder (torchvision/models/vgg.py), another relative
    to the working directory where that is shorter."""
    resolved = Path(path).resolve()
    for root in packages:
        if resolved.is_relative_to(root):
            return str(resolved.relative_to(root))
    try:
        rel = os.path.relpath(resolved)
    except ValueError:
        return path
    return rel if len(rel) < len(str(resolved)) else str(resolved)


def one_line(e: BaseException, what: str) -> NetworkError:
    """``what``: ExceptionType: message (at file:line (function)), on one line."""
    message = " ".join(str(e).split()) or "(no message)"
    at = where(e)
    return NetworkError(f"{what}: {type(e).__name__}: {message}" + (f" (at {at})" if at else ""))


def locate(target: str) -> Any:  # noqa: ANN401 (a class or a function)
    """The object ``model._target_`` names (``package.module.Class``), imported as ``python -m``
    would find it (PYTHONPATH and the working directory); any failure is one line."""
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    parts = target.split(".")
    for i in range(len(parts) - 1, 0, -1):
        name = ".".join(parts[:i])
        try:
            found = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name is not None and (name == e.name or name.startswith(e.name + ".")):
                continue  # no such module: a shorter prefix may be one
            raise one_line(e, f"importing {name} (model._target_={target}) failed") from None
        except Exception as e:  # noqa: BLE001 - the user's module: any error, one line
            raise one_line(e, f"importing {name} (model._target_={target}) failed") from None
        for attr in parts[i:]:
            if not hasattr(found, attr):
                raise NetworkError(f"model._target_={target}: {name} has no {attr!r}")
            found = getattr(found, attr)
        return found
    raise NetworkError(
        f"model._target_={target} cannot be imported: no module {parts[0]!r} (modules are "
        f"looked up on PYTHONPATH and in the working directory, {os.getcwd()})"
    )


def norm_keyword(factory: Callable) -> str | None:
    """The keyword through which a constructor takes a norm factory: ``norm`` or
    ``norm_layer`` (torchvision, timm), None for neither."""
    params = _parameters(factory)
    return next((k for k in ("norm", "norm_layer") if k in params), None)


def _parameters(factory: Callable) -> dict[str, inspect.Parameter]:
    try:
        return dict(inspect.signature(factory).parameters)
    except (TypeError, ValueError):
        return {}


def check_keys(target: str, factory: Callable, keys: list[str]) -> None:
    """Every key of the model config is a parameter of its constructor (unless it takes
    ``**kwargs``): ``model.bn_position`` on a network without it is refused in one line."""
    params = _parameters(factory)
    if not params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = [k for k in keys if k not in params]
    if unknown:
        shown = ", ".join(k for k in params if k not in ("self", "norm", "norm_layer"))
        raise NetworkError(
            f"model.{unknown[0]} is not a parameter of {target} (it takes: {shown or 'none'})"
        )


def build_network(model: Mapping[str, Any], norm: Callable[..., nn.Module],
                  bn_target: str) -> tuple[nn.Module, int]:  # fmt: skip
    """The network of a resolved model config (``_target_`` and its arguments), with the norm
    factory ``norm`` (the ``bn=`` option, ``bn_target`` its factory) put in; see the module
    docstring. Built with the RNG as the caller seeded it. Returns the network and how many
    torch BN layers were swapped (``swap_line`` says it)."""
    from hydra.utils import instantiate

    spec = dict(model)
    convert = spec.pop("convert_bn", True)
    if not isinstance(convert, bool):
        raise NetworkError(f"model.convert_bn must be true or false, got {convert!r}")
    target = spec.get("_target_")
    if not isinstance(target, str):
        raise NetworkError(f"model._target_ must name a class or function, got {target!r}")
    factory = locate(target)
    check_keys(target, factory, [k for k in spec if not k.startswith("_")])
    keyword = norm_keyword(factory)
    try:
        net = instantiate(spec, **({keyword: norm} if keyword else {}))
    except Exception as e:  # noqa: BLE001 - the user's constructor: any error, one line
        if target.startswith("bnsweep."):
            raise  # bnsweep's own refusals of a config value (bnsweep.config.checks.refusal)
        raise one_line(_unwrap(e), f"building the network {target} failed") from None
    if not isinstance(net, nn.Module):
        raise NetworkError(
            f"model._target_={target} returned a {type(net).__name__}, not a torch.nn.Module"
        )
    swapped = 0
    if convert and bn_target != TORCH_BN_TARGET:
        net, swapped = swap_batchnorms(net, norm)
    return net, swapped


def swap_line(swapped: int, bn_choice: str) -> str:
    """The line a run prints when it swapped torch's BN layers of a network."""
    return (f"model: {swapped} torch BatchNorm layer{'s' * (swapped > 1)} swapped for "
            f"bn={bn_choice} (model.convert_bn=false keeps them)")  # fmt: skip


def _unwrap(e: BaseException) -> BaseException:
    """The user's own exception inside Hydra's InstantiationException."""
    from hydra.errors import InstantiationException

    while isinstance(e, InstantiationException) and e.__cause__ is not None:
        e = e.__cause__
    return e


def torchvision_model(name: str, num_classes: int, in_channels: int = 3,
                      norm: Callable[..., nn.Module] | None = None) -> nn.Module:  # fmt: skip
    """Any classifier builder of ``torchvision.models`` by name, untrained (``weights=None``:
    nothing is downloaded), with ``num_classes`` outputs and its first convolution taking
    ``in_channels``. The norm factory goes in through ``norm_layer`` where the builder's
    network takes it (ResNets, MobileNets, …); elsewhere (VGG-BN, …) ``build_network`` swaps
    the torch BN layers it built."""
    import torchvision.models as models

    names = models.list_models(module=models)  # the classifiers (not detection, video, …)
    if name not in names:
        few = ", ".join(n for n in ("resnet18", "resnet50", "vgg11_bn", "mobilenet_v3_small",
                                    "efficientnet_b0", "densenet121") if n in names)  # fmt: skip
        raise NetworkError(
            f"model.name must be a classifier builder of torchvision.models, got {name!r}; "
            f"e.g. {few} ({len(names)} in all: torchvision.models.list_models(module=torchvision.models))"
        )
    builder = models.get_model_builder(name)
    options: dict[str, Any] = {"weights": None, "num_classes": num_classes}
    if name in ("googlenet", "inception_v3"):
        options.update(aux_logits=False, init_weights=True)  # one output: the logits
    net = None
    if norm is not None:
        try:
            net = builder(**options, norm_layer=norm)
        except TypeError as e:
            if "norm_layer" not in str(e):
                raise
    if net is None:
        net = builder(**options)
    adapt_first_conv(net, in_channels)
    return net


def adapt_first_conv(net: nn.Module, in_channels: int) -> None:
    """Give the network's first Conv2d ``in_channels`` input channels (a new layer of the same
    shape otherwise, initialised as torch initialises it), for data of other channels than the
    builder's 3."""
    first = next(((n, m) for n, m in net.named_modules() if isinstance(m, nn.Conv2d)), None)
    if first is None or first[1].in_channels == in_channels:
        return
    name, conv = first
    if conv.groups != 1:
        raise NetworkError(f"cannot adapt the first convolution {name!r} (groups={conv.groups}) "
                           f"to {in_channels} input channels")  # fmt: skip
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, bias=conv.bias is not None, padding_mode=conv.padding_mode)  # fmt: skip
    parent, _, attr = name.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, attr, new)
