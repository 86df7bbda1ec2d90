"""The generator spec: round trips, validation, and clear errors for bad documents."""

import json

import pytest

from model.errors import SpecError
from model.spec import GeneratorArchitecture, GeneratorSpec, LabelClass


def label_spec(**changes) -> GeneratorSpec:
    values = dict(
        architecture=GeneratorArchitecture(num_downs=7, base_width=16, norm="instance"),
        in_channels=2,
        out_channels=3,
        input_kind="label_map",
        palette=(LabelClass(0, "sky", (0, 0, 255)), LabelClass(5, "grass", (0, 255, 0))),
        one_hot=True,
        train_size=128,
        pad_multiple=128,
        inference_mode="train",
        task="labels2photo",
    )
    values.update(changes)
    return GeneratorSpec(**values)


def test_spec_round_trips_through_json_and_disk(tmp_path):
    spec = label_spec()
    assert GeneratorSpec.from_json(spec.to_json()) == spec
    path = spec.save(tmp_path)
    assert path.name == "spec.json"
    assert GeneratorSpec.load(tmp_path) == spec
    data = json.loads(path.read_text())
    assert data["palette"][1] == {"id": 5, "name": "grass", "color": [0, 255, 0]}
    assert data["architecture"]["norm"] == "instance"


def test_lab_spec_round_trips():
    spec = GeneratorSpec(
        architecture=GeneratorArchitecture(),
        in_channels=1,
        out_channels=2,
        input_kind="grayscale",
        color_space="lab",
    )
    assert GeneratorSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"in_channels": 3}, "takes 2 input channels"),
        ({"palette": ()}, "needs a palette"),
        ({"input_kind": "video"}, "input_kind"),
        ({"inference_mode": "sometimes"}, "inference_mode"),
        ({"direction": "sideways"}, "direction"),
        (
            {"palette": (LabelClass(0, "a", (1, 2, 3)), LabelClass(0, "b", (4, 5, 6)))},
            "unique",
        ),
    ],
)
def test_invalid_specs_are_refused_with_the_reason(changes, message):
    with pytest.raises(SpecError, match=message):
        label_spec(**changes)


def test_bad_documents_name_the_file_and_problem(tmp_path):
    (tmp_path / "spec.json").write_text("{not json")
    with pytest.raises(SpecError, match="spec.json.*not valid JSON"):
        GeneratorSpec.load(tmp_path)
    data = label_spec().to_dict()
    del data["architecture"]
    with pytest.raises(SpecError, match="missing the field 'architecture'"):
        GeneratorSpec.from_dict(data)
    data = label_spec().to_dict() | {"colour": "blue"}
    with pytest.raises(SpecError, match="unknown fields: colour"):
        GeneratorSpec.from_dict(data)
    data = label_spec().to_dict() | {"version": 99}
    with pytest.raises(SpecError, match="newer"):
        GeneratorSpec.from_dict(data)
    with pytest.raises(SpecError, match="no spec file"):
        GeneratorSpec.load(tmp_path / "missing")


def test_label_class_checks_its_color():
    with pytest.raises(SpecError, match="invalid color"):
        LabelClass(1, "x", (0, 0, 300))
