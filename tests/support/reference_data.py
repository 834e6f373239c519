"""Where the suite finds its reference files: the copies in tests/data (see its README).

`../shared` is only the origin of those copies; tests/unit/test_reference_data.py compares the two
when it is there. Nothing else in the suite reads `../shared`, so a bare clone passes `make test`.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = REPO_ROOT / "tests" / "data"
SCHEMAS_DIR = DATA_DIR / "schemas"
PROVIDER_CASES = DATA_DIR / "spec" / "argo-web-provider-cases.json"


def crd_path(file_name: str) -> Path:
    """A CRD copy by file name, e.g. "virtualservices.networking.istio.io.crd.yaml"."""
    return SCHEMAS_DIR / file_name


def origin_dir() -> Path:
    """The reference directory the copies come from: $RA_SHARED_DIR or <repo>/../shared."""
    return Path(os.environ.get("RA_SHARED_DIR") or REPO_ROOT.parent / "shared")
