"""The compact form of a bundle's golden samples: ``golden.npz`` (schema 2, tensor inputs).

Golden samples are ``{"inputs": ..., "outputs": {role: values}}``: the inputs the device runs
and the ORIGINAL model's outputs for them. A matrix or column model keeps them in
``golden.json``. A model with tensor inputs (images, audio or sensor windows) would need
megabytes of JSON for 32 samples, so its manifest names ``golden.npz`` as ``golden_file``: one
.npy member per array, ``inputs/NAME.npy`` in the input's own dtype (uint8 images stay one byte
a value) and ``outputs/ROLE.npy`` (labels as integers or fixed-width text, never pickled
objects).

``encode`` writes the archive deterministically (sorted members, fixed timestamps and
attributes, deflate), so the same samples always give the same bytes and the bundle's sha256
stays reproducible. ``decode`` reads it back through ``edgefleet.inputs.read_npz`` (headers
checked before anything is allocated) into the same document shape as golden.json, inputs as
arrays by name and outputs as lists. ``read_golden`` picks the reader by the file's suffix.

Pure: bytes in, bytes out. It does not pick the samples (the converter does) or judge a
model on them (``agent.health``).
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Mapping
from typing import Any

from edgefleet.errors import BundleError, InputError

NPZ_NAME = "golden.npz"
_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can carry: no clock in the bytes
_INPUTS = "inputs/"
_OUTPUTS = "outputs/"


def encode(inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> bytes:
    """``golden.npz``'s bytes for these inputs (arrays by input name) and outputs (by role)."""
    import numpy as np
    from numpy.lib import format as npy_format

    members: dict[str, Any] = {f"{_INPUTS}{name}.npy": np.ascontiguousarray(value) for name, value in inputs.items()}
    for role, values in outputs.items():
        array = np.asarray(values)
        if array.dtype.kind == "O":  # labels of mixed or Python types: fixed-width text, never pickled
            array = np.asarray([str(v) for v in np.asarray(values, dtype=object).reshape(-1)])
        members[f"{_OUTPUTS}{role}.npy"] = array
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(members):
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3
            info.external_attr = 0o644 << 16
            data = io.BytesIO()
            npy_format.write_array(data, members[name], allow_pickle=False)
            archive.writestr(info, data.getvalue())
    return buffer.getvalue()


def decode(data: bytes) -> dict[str, Any]:
    """``golden.npz``'s bytes as a golden document: inputs as arrays by name, outputs as lists."""
    from edgefleet.inputs import read_npz

    try:
        arrays = read_npz(data, NPZ_NAME)
    except InputError as exc:
        raise BundleError(f"{NPZ_NAME} is malformed: {exc.message}", fix="rebuild the bundle with `edgefleet convert`") from exc
    inputs = {name[len(_INPUTS):]: value for name, value in arrays.items() if name.startswith(_INPUTS)}
    outputs = {name[len(_OUTPUTS):]: value.tolist() for name, value in arrays.items() if name.startswith(_OUTPUTS)}
    if not inputs or not outputs or len(inputs) + len(outputs) != len(arrays):
        raise BundleError(f"{NPZ_NAME} needs inputs/NAME.npy and outputs/ROLE.npy members, and no others",
                          fix="rebuild the bundle with `edgefleet convert`")
    return {"inputs": inputs, "outputs": outputs}


def read_golden(name: str, data: bytes) -> dict[str, Any]:
    """A bundle's golden file by its name: ``.npz`` through ``decode``, anything else as JSON."""
    if name.endswith(".npz"):
        return decode(data)
    try:
        value = json.loads(data)
    except ValueError as exc:
        raise BundleError(f"bundle member {name} is not JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise BundleError(f"bundle member {name} is not a JSON object")
    return value
