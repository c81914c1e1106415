"""Packaging metadata as an installer reads it (issue 17): SPDX license, URLs, classifiers, systemd docs links.

The metadata is built by setuptools' own PEP 517 hook, in a subprocess, so its warnings
(a TOML-table license is deprecated) would show on stderr.
"""

from __future__ import annotations

import email.parser
import re
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def test_license_is_an_spdx_expression() -> None:
    assert PROJECT["license"] == "Apache-2.0"
    assert not any(c.startswith("License ::") for c in PROJECT["classifiers"])  # PEP 639: one or the other


def test_urls_and_classifiers() -> None:
    assert {"Homepage", "Documentation", "Source", "Issues"} <= set(PROJECT["urls"])
    assert all(url.startswith("https://") for url in PROJECT["urls"].values())
    assert "Programming Language :: Python :: 3.11" in PROJECT["classifiers"]
    assert "Typing :: Typed" in PROJECT["classifiers"]


def _documentation_links(text: str) -> list[str]:
    return [link for line in text.splitlines() if line.startswith("Documentation=")
            for link in line.removeprefix("Documentation=").split()]


def test_systemd_units_point_at_the_documentation_url_the_package_names() -> None:
    docs = PROJECT["urls"]["Documentation"].rstrip("/")
    units = [(REPO / "docs" / "systemd" / "edgefleet-agent.service").read_text()]
    # The server's unit lives in docs/deployment.md as an ini block.
    units += re.findall(r"```ini\n(.*?)```", (REPO / "docs" / "deployment.md").read_text(), re.S)
    links = [link for unit in units for link in _documentation_links(unit)]
    assert len(links) >= 2
    for link in links:
        assert link.startswith(docs + "/"), link
        assert (REPO / "docs" / link.removeprefix(docs + "/")).is_file(), f"{link} names no file in docs/"


def test_built_metadata_has_no_deprecation_warning(tmp_path: Path) -> None:
    code = ("import sys, setuptools.build_meta as b; "
            "print(b.prepare_metadata_for_build_wheel(sys.argv[1]))")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert "deprecat" not in done.stderr.lower(), done.stderr
    dist_info = tmp_path / done.stdout.strip().splitlines()[-1]
    metadata = email.parser.Parser().parsestr((dist_info / "METADATA").read_text())
    assert metadata["License-Expression"] == "Apache-2.0"
    assert any(u.startswith("Documentation, https://") for u in metadata.get_all("Project-URL") or [])
    assert "Typing :: Typed" in (metadata.get_all("Classifier") or [])
