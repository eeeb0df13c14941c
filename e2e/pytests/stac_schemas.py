"""Offline JSON schemas for stac-validator and stac-api-validator.

Both validators download the JSON schemas they validate against (schemas.stacspec.org,
stac-extensions.github.io, proj.org, geojson.org). This machine, developers' machines and CI
reach only package registries, so the schemas come from packages on PyPI instead, byte for byte
what those sites serve:

* STAC 1.1.0 core (item, collection, catalog and the parts they reference) and the GeoJSON
  Feature/Geometry schemas: package data of pystac (``pystac/validation/jsonschemas``), pinned
  in e2e/requirements.txt;
* datacube v2.2.0 (and the PROJJSON v0.4 schema it references) and xarray-assets v1.0.0: the
  HTTP responses recorded (vcrpy cassettes) by the test suites shipped in the source
  distributions of ``pystac-ext-datacube==2.2.1`` and ``pystac-ext-xarray-assets==1.0.1``
  (Apache-2.0). ``fetch()`` downloads those two sdists with pip into a cache directory (e2e/
  setup.sh runs it; the tests run it when the cache is missing) and checks their sha256.
  Nothing third-party is committed to this repository.

A schema that is not in the map is an error, never a silent pass: ``schema_map()`` is given to
stac-validator as its ``schema_map`` (the same as ``--schema-map URL=FILE``), and for
stac-api-validator, which has no such option, ``python stac_schemas.py api-validator ARGS``
runs its unmodified command line with stac-validator's schema loader resolving URLs through
the same map (and failing on any URL outside it).

Usage: python stac_schemas.py fetch | api-validator STAC_API_VALIDATOR_ARGS...
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

# sdist -> (pip requirement, sha256 of the file PyPI serves)
SDISTS = {
    "pystac_ext_datacube-2.2.1.tar.gz": (
        "pystac-ext-datacube==2.2.1",
        "80f7ecbc82dee5d713f2c6ad4f87cd01a7559c1f77fc9e51d2ff9bd06c4db5ae",
    ),
    "pystac_ext_xarray_assets-1.0.1.tar.gz": (
        "pystac-ext-xarray-assets==1.0.1",
        "7d75e79a2b8702d1f572eecdf8af6b29a1013789f6de5e688a5a3c9c14254de6",
    ),
}
STAC_VERSION = "1.1.0"
DATACUBE = "https://stac-extensions.github.io/datacube/v2.2.0/schema.json"
XARRAY_ASSETS = "https://stac-extensions.github.io/xarray-assets/v1.0.0/schema.json"
PROJJSON = "https://proj.org/schemas/v0.4/projjson.schema.json"


def cache_dir() -> Path:
    env = os.environ.get("CLOUDIFY_STAC_SCHEMAS")
    return Path(env) if env else Path(sys.prefix) / "stac-schemas"


def _sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def fetch(cache: Path | None = None) -> Path:
    """Downloads the pinned sdists into ``cache`` unless they are there (idempotent)."""
    cache = cache or cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    for name, (req, sha) in SDISTS.items():
        p = cache / name
        if p.exists() and _sha256(p) == sha:
            continue
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                        "-d", str(cache), req], check=True)
        if not p.exists() or _sha256(p) != sha:
            raise RuntimeError(f"{p}: missing or sha256 differs from the pinned {sha}")
    return cache


def _cassette_schemas(cache: Path) -> dict[str, str]:
    """URL -> local file of every schema recorded in the sdists' cassettes."""
    import yaml

    out_dir = cache / "schemas"
    out_dir.mkdir(exist_ok=True)
    found: dict[str, str] = {}
    redirects: dict[str, str] = {}
    for name in SDISTS:
        with tarfile.open(cache / name) as tar:
            for m in tar.getmembers():
                if "/tests/cassettes/" not in m.name or not m.name.endswith(".yaml"):
                    continue
                f = tar.extractfile(m)
                if f is None:
                    continue
                for inter in yaml.safe_load(f.read()).get("interactions", []):
                    uri = inter["request"]["uri"]
                    resp = inter["response"]
                    code = resp["status"]["code"]
                    if code == 200:
                        body = resp["body"]["string"]
                        json.loads(body)  # a schema, not an error page
                        p = out_dir / (hashlib.sha256(uri.encode()).hexdigest()[:16] + ".json")
                        p.write_text(body)
                        found[uri] = str(p)
                    elif code in (301, 302, 307, 308):
                        loc = {k.lower(): v for k, v in resp["headers"].items()}["location"]
                        redirects[uri] = loc[0] if isinstance(loc, list) else loc
    for uri, target in redirects.items():
        if target in found:
            found.setdefault(uri, found[target])
    return found


def schema_map(cache: Path | None = None) -> dict[str, str]:
    """Every schema URL our documents need -> a local file."""
    import pystac.validation

    m: dict[str, str] = {}
    root = Path(pystac.validation.__file__).parent / "jsonschemas"
    for f in sorted((root / "stac-spec" / f"v{STAC_VERSION}").glob("*.json")):
        spec = f.stem if f.stem in ("catalog", "collection") else "item"
        m[f"https://schemas.stacspec.org/v{STAC_VERSION}/{spec}-spec/json-schema/{f.name}"] = str(f)
    for f in sorted((root / "geojson").glob("*.json")):
        m[f"https://geojson.org/schema/{f.name}"] = str(f)
    m.update(_cassette_schemas(fetch(cache)))
    missing = [u for u in (DATACUBE, XARRAY_ASSETS, PROJJSON,
                           f"https://schemas.stacspec.org/v{STAC_VERSION}/item-spec/json-schema/item.json",
                           f"https://schemas.stacspec.org/v{STAC_VERSION}/collection-spec/json-schema/collection.json")
               if u not in m]
    if missing:
        raise RuntimeError(f"offline schemas missing: {missing}")
    return m


def install_offline_resolver(m: dict[str, str]) -> None:
    """Makes stac-validator's schema loader (used by stac-check and stac-api-validator as
    well) read every schema URL from ``m`` and fail on any other URL."""
    import stac_validator.utilities as u

    local = u._map_extension_url_to_local

    def resolve(url: str) -> str:
        if url in m:
            return m[url]
        if url.startswith(("http://", "https://")):
            raise RuntimeError(f"offline: no local copy of schema {url}")
        return local(url)

    u._map_extension_url_to_local = resolve


def main(argv: list[str]) -> int:
    if argv[:1] == ["fetch"]:
        print(f"STAC schema sdists in {fetch()}")
        return 0
    if argv[:1] == ["api-validator"]:
        install_offline_resolver(schema_map())
        from stac_api_validator.__main__ import main as sav_main

        try:
            sav_main(argv[1:], prog_name="stac-api-validator")
        except SystemExit as e:
            return e.code if isinstance(e.code, int) else 1
        return 0  # its "Failed." path returns instead of exiting: callers also read the output
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
