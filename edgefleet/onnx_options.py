"""onnxruntime session settings that every side applies, so that a model computes the same
numbers in the converter's proof, on a device and in the server's predict endpoint.

Exact int8 products: by default onnxruntime multiplies u8 by s8 with an instruction that
saturates at 16 bits on x86 CPUs without VNNI (AVX2, AVX-512 before Cascade Lake, the AMD EPYC
Zen 3 hosts the tests ran on). There an int8-static audio model's relative error was 0.051
instead of 0.0105, and a device's answers differed from the proof's in the 2nd digit.
``session.x64quantprecision`` is onnxruntime's own switch to exact u8u8 products on those CPUs;
it changes nothing on VNNI x86 or on ARM. This module imports nothing: it takes the caller's
``onnxruntime.SessionOptions``.
"""

from __future__ import annotations

from typing import Any

EXACT_INT8_KEY = "session.x64quantprecision"


def exact_int8(options: Any) -> Any:
    """Set exact int8 products on ``options`` (an ``onnxruntime.SessionOptions``) and return it."""
    options.add_session_config_entry(EXACT_INT8_KEY, "1")
    return options
