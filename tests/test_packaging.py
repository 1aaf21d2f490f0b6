"""A plain (non-editable) install ships searchers/ and spaces/ as raynas.searchers / raynas.spaces."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_maps_searchers_and_spaces_into_raynas(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(ROOT),
                    "-w", str(tmp_path)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("raynas-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder, package in (("searchers", "raynas/searchers"), ("spaces", "raynas/spaces"), ("raynas", "raynas")):
        sources = {p.name for p in (ROOT / folder).glob("*.py")}
        assert sources and {f"{package}/{name}" for name in sources} <= names
    assert not any(n.startswith(("spaces/", "searchers/", "tests/")) for n in names)
    assert any(n.endswith("entry_points.txt") for n in names)
