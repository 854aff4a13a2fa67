"""Every target reads its options as a typed, frozen record built from the options it declares."""
from __future__ import annotations

import dataclasses

import pytest

from edgekit.contracts import ExportRequest
from edgekit.targets import get_target, list_targets


@pytest.mark.parametrize("target", [t.name for t in list_targets()])
def test_settings_has_one_field_per_declared_option_with_its_default(target):
    t = get_target(target)
    s = t.settings(ExportRequest(model="lenet5", target=target))
    assert type(s).__name__ == f"{type(t).__name__}Options"
    assert [f.name for f in dataclasses.fields(s)] == [o.dest for o in t.options]
    assert {o.dest: getattr(s, o.dest) for o in t.options} == {o.dest: o.default for o in t.options}
    if t.options:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(s, t.options[0].dest, 1)


def test_settings_converts_numbers_and_keeps_given_values():
    et = get_target("executorch")
    s = et.settings(ExportRequest(model="lenet5", target="executorch", precision="int8",
                                  options={"et_calib_samples": "12", "et_per_tensor": True, "et_max_float": None}))
    assert s.et_calib_samples == 12 and isinstance(s.et_calib_samples, int)
    assert s.et_per_tensor is True
    assert s.et_max_float == next(o.default for o in et.options if o.dest == "et_max_float")
    ov = get_target("openvino").settings(ExportRequest(model="lenet5", target="openvino",
                                                       options={"ov_guard_seconds": 2}))
    assert ov.ov_guard_seconds == 2.0 and isinstance(ov.ov_guard_seconds, float)


def test_settings_of_a_request_without_options():
    req = ExportRequest(model="lenet5", target="coreml")
    req.options = None
    s = get_target("coreml").settings(req)
    assert s.int8_mode == "w8a8" and s.compute_units == "ALL"
