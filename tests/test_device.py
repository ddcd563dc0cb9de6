"""Devices: parsing, equality with strings, interning, backend lookup and the errors for bad specs."""

import pickle

import pytest

import ember
from ember.device import CPU, Device, get_backend, to_device


def test_parse_and_print():
    assert str(Device("cpu")) == "cpu" and repr(Device("cpu")) == "device('cpu')"
    d = Device("cuda:1")
    assert (d.type, d.index, str(d)) == ("cuda", 1, "cuda:1")
    assert Device("cuda").index == 0
    assert Device(Device("cuda:2")) == "cuda:2"


def test_equality_and_hash():
    assert Device("cpu") == "cpu" and Device("cpu") == Device("cpu") and Device("cpu") != "cuda"
    assert Device("cpu") != "not a device" and Device("cpu") != 3
    assert len({Device("cpu"), Device("cpu"), Device("cuda:0"), Device("cuda")}) == 2


def test_to_device_interns():
    assert to_device(None) is CPU and to_device("cpu") is CPU and to_device(Device("cpu")) is CPU
    assert to_device("cuda:0") is to_device(Device("cuda"))
    assert ember.tensor([1.0], device="cpu").device is ember.zeros(1).device
    assert ember.zeros(1).to("cpu").device is CPU


def test_pickle_round_trip():
    assert pickle.loads(pickle.dumps(Device("cuda:3"))) == Device("cuda:3")


@pytest.mark.parametrize("spec,msg", [
    ("tpu", "unknown device 'tpu'; expected 'cpu' or 'cuda"),
    ("cuda:x", r"bad device index in 'cuda:x'"),
    (3, "cannot interpret 3 as a device"),
])
def test_bad_specs(spec, msg):
    with pytest.raises(ember.DeviceError, match=msg):
        Device(spec)


def test_unavailable_backend_names_the_available_ones():
    assert get_backend(CPU).name == "cpu"
    with pytest.raises(ember.DeviceError, match="device cuda:0 is not available in this build; available: cpu"):
        get_backend(Device("cuda"))
    with pytest.raises(ember.DeviceError, match="not available"):
        ember.zeros(2, device="cuda")
