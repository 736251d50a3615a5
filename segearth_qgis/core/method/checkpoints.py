"""Reading weight files without executing code: safetensors, torch's ``weights_only`` or a restricted unpickler."""

import functools
import os
import pickle
import types
import zipfile
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    import torch

ACCEPTED = (".safetensors files, and torch checkpoints that torch.load(weights_only=True) reads or whose tensors the "
            "restricted unpickler reads (any other object becomes an inert placeholder)")

# The allow-list is torch's weights_only one (torch/_weights_only_unpickler.py) less sparse tensors: torch validates
# those only under weights_only=True, and no checkpoint read here has any.
_REBUILD_FUNCTIONS = ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
                      "_rebuild_parameter_with_state", "_rebuild_qtensor", "_rebuild_meta_tensor_no_storage",
                      "_rebuild_nested_tensor", "_rebuild_wrapper_subclass", "_rebuild_device_tensor_from_numpy",
                      "_rebuild_device_tensor_from_cpu_tensor")


class Placeholder:
    """Stands for every global outside the allow-list: takes any arguments, state or items, keeps and runs nothing."""

    __slots__ = ()
    name = "?"

    def __new__(cls, *args: object, **kwargs: object) -> "Placeholder":
        return object.__new__(cls)

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def __call__(self, *args: object, **kwargs: object) -> "Placeholder":
        return self

    def __setstate__(self, state: object) -> None:
        pass

    def __setitem__(self, key: object, value: object) -> None:
        pass

    def append(self, item: object) -> None:
        pass

    def extend(self, items: object) -> None:
        pass

    def add(self, item: object) -> None:
        pass

    def __repr__(self) -> str:
        return f"<placeholder for {self.name}>"


@functools.cache
def _allowed_globals() -> dict[str, object]:
    """``{'module.name': object}``: tensor and storage rebuilding, dtypes, devices and a few plain containers."""
    import codecs
    from collections import Counter, OrderedDict

    import torch

    allowed = {
        "collections.OrderedDict": OrderedDict,
        "collections.Counter": Counter,
        "torch.nn.parameter.Parameter": torch.nn.Parameter,
        "torch.serialization._get_layout": torch.serialization._get_layout,
        "torch.Size": torch.Size,
        "torch.Tensor": torch.Tensor,
        "torch.device": torch.device,
        "torch._tensor._rebuild_from_type_v2": torch._tensor._rebuild_from_type_v2,
        "_codecs.encode": codecs.encode,
        "builtins.bytearray": bytearray,
        "builtins.set": set,
        "builtins.complex": complex,
    }
    allowed.update({f"torch._utils.{name}": getattr(torch._utils, name)
                    for name in _REBUILD_FUNCTIONS if hasattr(torch._utils, name)})
    allowed.update({f"torch.{name}": value for name, value in vars(torch).items()
                    if isinstance(value, torch.dtype | torch.qscheme)})
    allowed.update({f"{cls.__module__}.{cls.__name__}": cls for cls in torch._tensor_classes
                    if "sparse" not in cls.__module__})
    for cls in torch._storage_classes:
        # Legacy typed storages become torch's inert StorageType, as in torch's own loaders.
        plain = cls in (torch.storage.TypedStorage, torch.storage.UntypedStorage)
        allowed[f"{cls.__module__}.{cls.__name__}"] = cls if plain else torch.serialization.StorageType(cls.__name__)
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves globals from the allow-list only; anything else, ``os.system`` included, becomes a placeholder."""

    def find_class(self, module: str, name: str) -> object:
        from torch._utils import IMPORT_MAPPING, NAME_MAPPING

        # Python 2 names, as torch.save's protocol 2 writes them (``__builtin__.set``).
        module, name = NAME_MAPPING.get((module, name), (IMPORT_MAPPING.get(module, module), name))
        allowed = _allowed_globals().get(f"{module}.{name}")
        if allowed is not None:
            return allowed
        return type("Placeholder", (Placeholder,), {"__slots__": (), "name": f"{module}.{name}"})


def _restricted_load(file: IO[bytes], **kwargs: object) -> object:
    return RestrictedUnpickler(file, **kwargs).load()


# What torch.load asks of ``pickle_module``: ``Unpickler`` (subclassed, given persistent_load), ``load`` and a name.
restricted_pickle = types.SimpleNamespace(__name__="segearth_restricted_pickle", Unpickler=RestrictedUnpickler,
                                          load=_restricted_load)


def _is_torchscript(path: str | os.PathLike) -> bool:
    """torch.load(weights_only=False) hands TorchScript archives (``constants.pkl`` inside) to torch.jit.load."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.partition("/")[2] == "constants.pkl" for name in archive.namelist())


def load_restricted(path: str | os.PathLike,
                    map_location: "str | torch.device" = "cpu") -> "dict[str, torch.Tensor]":
    """``{name: tensor}`` from a torch checkpoint through the restricted unpickler, placeholders and other values
    dropped."""
    import torch

    if _is_torchscript(path):
        raise RuntimeError("a TorchScript archive, which torch.load would run through torch.jit.load")
    state = torch.load(path, map_location=map_location, weights_only=False, pickle_module=restricted_pickle)  # nosec B614: RestrictedUnpickler resolves allow-listed globals only
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        return {}
    # detach(): plain tensors, without the hooks or attributes a pickle may have hung on them.
    return {key: value.detach() for key, value in state.items()
            if isinstance(key, str) and isinstance(value, torch.Tensor)}


def load_state_dict(path: str | os.PathLike,
                    map_location: "str | torch.device" = "cpu") -> "dict[str, torch.Tensor]":
    """A flat ``{name: tensor}`` from a ``.safetensors`` file, a raw state dict, or ``{'state_dict': ...}``.

    A ``module.`` prefix (DataParallel) is removed, as open_clip does. A pickle that ``weights_only=True`` refuses
    for its other objects (a Lightning checkpoint's hyper_parameters, say) is read again by the restricted unpickler.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path), device=str(map_location))
    else:
        try:
            try:
                state = torch.load(path, map_location=map_location, weights_only=True)
            except pickle.UnpicklingError as error:
                if "Weights only load failed" not in str(error):
                    raise
                state = load_restricted(path, map_location)
        except Exception as error:
            raise ValueError(f"{path} could not be read as a checkpoint ({error.__class__.__name__}: {error}); "
                             f"accepted: {ACCEPTED}") from error
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise ValueError(f"{path} holds no state dict")
    if all(key.startswith("module.") for key in state):
        state = {key[len("module."):]: value for key, value in state.items()}
    return state
