"""load_state_dict: safetensors, weights_only pickles, and the restricted unpickler that never runs a file's code."""

import builtins
import io
import os
import pickle
from pathlib import Path

import pytest
import torch

from segearth_qgis.core.method.checkpoints import (
    Placeholder,
    RestrictedUnpickler,
    load_restricted,
    load_state_dict,
    restricted_pickle,
)

WEIGHTS = {"upsampler.w": torch.arange(6, dtype=torch.float32).reshape(2, 3),
           "upsampler.b": torch.tensor([1.5, -2.0], dtype=torch.float16)}
STATE_DICT_MARKER = []  # filled by HyperParameters.__setstate__, which must never run while loading


class HyperParameters(dict):
    """Like Lightning's AttributeDict: a dict subclass with attributes, outside torch's weights_only allow-list."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.note = "saved"

    def __setstate__(self, state):
        STATE_DICT_MARKER.append(state)
        self.__dict__.update(state)


class OptimizerState:
    def __init__(self):
        self.lr = 1e-3


class Exploit:
    """Unpickling calls ``function(*args)``: a real unpickler would run it."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def assert_weights(state, expected=WEIGHTS):
    assert sorted(state) == sorted(expected)
    for key, value in expected.items():
        assert type(state[key]) is torch.Tensor
        assert state[key].dtype == value.dtype
        assert torch.equal(state[key], value)


def lightning_checkpoint(path):
    torch.save({"state_dict": WEIGHTS, "hyper_parameters": HyperParameters(arch="jbu_one", dim=512), "epoch": 3,
                "optimizer_states": [{"state": {0: OptimizerState()}, "param_groups": [{"lr": 1e-3}]}]}, path)
    return path


def test_lightning_checkpoint_loads_only_its_tensors(tmp_path):
    path = lightning_checkpoint(tmp_path / "simfeatup.ckpt")
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        torch.load(path, weights_only=True)
    STATE_DICT_MARKER.clear()
    assert_weights(load_state_dict(path))
    assert STATE_DICT_MARKER == [], "a class from the checkpoint was imported and its __setstate__ ran"


def test_other_objects_become_placeholders(tmp_path):
    path = lightning_checkpoint(tmp_path / "simfeatup.ckpt")
    loaded = torch.load(path, weights_only=False, pickle_module=restricted_pickle)
    assert isinstance(loaded["hyper_parameters"], Placeholder)
    assert loaded["hyper_parameters"].name.endswith("HyperParameters")
    assert isinstance(loaded["optimizer_states"][0]["state"][0], Placeholder)
    assert loaded["epoch"] == 3
    assert_weights(loaded["state_dict"])


@pytest.mark.parametrize("name", ["os.system", "posix.system", "builtins.eval", "builtins.exec", "builtins.getattr",
                                  "subprocess.run", "pathlib.Path", "torch.load", "torch.hub.load",
                                  "segearth_qgis.core.method.checkpoints.load_state_dict"])
def test_globals_outside_the_allow_list_are_placeholders(name):
    module, _, attribute = name.rpartition(".")
    found = RestrictedUnpickler(io.BytesIO()).find_class(module, attribute)
    assert isinstance(found, type) and issubclass(found, Placeholder)
    assert found("rm -rf /", key="value")("again").name == name


def test_allow_list_resolves_to_torch_objects():
    unpickler = RestrictedUnpickler(io.BytesIO())
    assert unpickler.find_class("torch._utils", "_rebuild_tensor_v2") is torch._utils._rebuild_tensor_v2
    assert unpickler.find_class("collections", "OrderedDict").__name__ == "OrderedDict"
    assert unpickler.find_class("torch", "float16") is torch.float16
    assert unpickler.find_class("__builtin__", "set") is set  # protocol 2 writes Python 2 names
    assert issubclass(unpickler.find_class("torch._utils", "_rebuild_sparse_tensor"), Placeholder)


def payloads(marker):
    return {"os.system": Exploit(os.system, f"touch {marker}"),
            "exec": Exploit(builtins.exec, f"open({str(marker)!r}, 'w').write('pwned')"),
            "write_text": Exploit(Path.write_text, marker, "pwned")}


@pytest.mark.parametrize("payload", ["os.system", "exec", "write_text"])
def test_payloads_are_live(tmp_path, payload):
    """The payloads below do write the marker when a plain unpickler reads them."""
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(payloads(marker)[payload]))
    assert marker.exists()


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
@pytest.mark.parametrize("protocol", [2, 5])
@pytest.mark.parametrize("payload", ["os.system", "exec", "write_text"])
def test_malicious_checkpoint_runs_nothing(tmp_path, payload, protocol, zip_format):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": WEIGHTS, "hyper_parameters": payloads(marker)[payload]}, path,
               pickle_protocol=protocol, _use_new_zipfile_serialization=zip_format)
    assert_weights(load_state_dict(path))
    assert not marker.exists()


def test_malicious_tensor_slot_is_dropped(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({**WEIGHTS, "upsampler.evil": payloads(marker)["os.system"]}, path)
    assert_weights(load_state_dict(path))
    assert not marker.exists()


def test_malicious_checkpoint_without_tensors_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": payloads(marker)["exec"]}}, path)
    with pytest.raises(ValueError, match="holds no state dict"):
        load_state_dict(path)
    assert not marker.exists()


@pytest.mark.parametrize("payload", ["os.system", "exec", "write_text"])
def test_plain_pickle_runs_nothing(tmp_path, payload):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"state_dict": {"w": torch.ones(2)}, "x": payloads(marker)[payload]}, protocol=2))
    with pytest.raises(ValueError, match="evil.pt"):
        load_state_dict(path)
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore:'torch.load' received a zip file:UserWarning")
def test_torchscript_archive_is_never_handed_to_jit(tmp_path):
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), path)
    with pytest.raises(RuntimeError, match="TorchScript"):
        load_restricted(path)
    with pytest.raises(ValueError, match="scripted.pt"):
        load_state_dict(path)


def test_safetensors(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "clip.safetensors"
    save_file(WEIGHTS, str(path))
    assert_weights(load_state_dict(path))


def test_raw_state_dict_and_wrapped_state_dict(tmp_path):
    torch.save(WEIGHTS, tmp_path / "raw.pt")
    torch.save({"state_dict": WEIGHTS, "epoch": 0, "global_step": 0}, tmp_path / "wrapped.ckpt")
    assert_weights(load_state_dict(tmp_path / "raw.pt"))
    assert_weights(load_state_dict(tmp_path / "wrapped.ckpt"))


def test_module_prefix_is_stripped(tmp_path):
    path = tmp_path / "dataparallel.pt"
    torch.save({f"module.{key}": value for key, value in WEIGHTS.items()}, path)
    assert_weights(load_state_dict(path))
    # ...also when the restricted unpickler read it
    torch.save({"state_dict": {f"module.{key}": value for key, value in WEIGHTS.items()},
                "hyper_parameters": HyperParameters()}, path)
    assert_weights(load_state_dict(path))


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        load_state_dict(tmp_path / "absent.pt")


@pytest.mark.parametrize("data", [b"not a checkpoint at all", b"\x80\x02}q\x00.", bytes(range(256)) * 4])
def test_garbage_is_a_clear_value_error(tmp_path, data):
    path = tmp_path / "garbage.pt"
    path.write_bytes(data)
    with pytest.raises(ValueError, match="garbage.pt") as raised:
        load_state_dict(path)
    assert "accepted" in str(raised.value) or "no state dict" in str(raised.value)
