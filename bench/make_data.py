#!/usr/bin/env python3
"""Write the cloudify benchmark dataset: one netCDF4 file per model year.

    make_data.py OUTDIR [YEARS] [--start-year 2000] [--force]

Each file holds a CMIP6-like daily near-surface air temperature on a global 0.5 degree grid:

* ``tas(time, lat, lon)`` float32, 365 x 360 x 720, ``time`` unlimited;
* HDF5 chunks ``(1, 360, 720)`` (one chunk per day), zlib level 1 with the shuffle filter;
* ``_FillValue = missing_value = 1e20``;
* ``time`` in ``days since 2000-01-01`` on the ``noleap`` calendar, with ``time_bnds``;
  ``lat``/``lon`` with ``lat_bnds``/``lon_bnds``; the scalar coordinate ``height = 2 m``;
* CF-1.7 / CMIP6-style variable and global attributes.

The values are a plausible temperature field rather than white noise, so that compression ratios
and decode costs resemble real model output: a zonal-mean climatology, pseudo-continents with a
stronger seasonal cycle and a lapse-rate cooling, a hemispherically opposed seasonal cycle,
synoptic "weather" (spatially smooth noise that persists from day to day, AR(1) in time), and a
little grid-scale noise. The generator is deterministic (fixed seed): the same arguments always
produce the same values.

Files are written under a temporary name and renamed when complete, so an interrupted run never
leaves a truncated file behind; existing complete files are kept unless ``--force`` is given.
Needs numpy and netCDF4.
"""
import argparse
import os
import sys

import netCDF4
import numpy as np

NLAT, NLON = 360, 720
DAYS_PER_YEAR = 365  # noleap calendar
FILL = np.float32(1e20)
VAR = "tas"


def file_name(year: int) -> str:
    return f"{VAR}_day_SYN-0p5_historical_r1i1p1f1_gn_{year}0101-{year}1231.nc"


def interp_matrix(n_out: int, n_in: int, periodic: bool) -> np.ndarray:
    """Linear interpolation weights from n_in evenly spaced nodes onto n_out evenly spaced points."""
    m = np.zeros((n_out, n_in))
    if periodic:
        pos = (np.arange(n_out) + 0.5) * n_in / n_out
        lo = np.floor(pos).astype(int)
        w = pos - lo
        m[np.arange(n_out), lo % n_in] += 1 - w
        m[np.arange(n_out), (lo + 1) % n_in] += w
    else:
        pos = np.linspace(0, n_in - 1, n_out)
        lo = np.minimum(np.floor(pos).astype(int), n_in - 2)
        w = pos - lo
        m[np.arange(n_out), lo] += 1 - w
        m[np.arange(n_out), lo + 1] += w
    return m


class Climate:
    """A deterministic, cheap, smooth-but-not-trivial daily temperature generator."""

    def __init__(self, seed: int = 20000101):
        self.rng = np.random.default_rng(seed)
        self.lat = -90 + 0.25 + 0.5 * np.arange(NLAT)
        self.lon = 0.25 + 0.5 * np.arange(NLON)
        phi = np.deg2rad(self.lat)[:, None]
        lam = np.deg2rad(self.lon)[None, :]

        # pseudo-continents: a few low-order waves, squashed into a 0..1 "land fraction"
        waves = (np.sin(2 * lam + 0.5) * np.cos(phi) + 0.8 * np.sin(3 * phi + 1.0) * np.cos(lam - 1.2)
                 + 0.6 * np.cos(4 * lam) * np.sin(2 * phi) + 0.4 * np.sin(lam + 3 * phi))
        self.land = 0.5 * (1 + np.tanh(3 * (waves - 0.35)))
        # "orography": a fixed smooth random field, only over land (lapse-rate cooling)
        oro = interp_matrix(NLAT, 46, False) @ self.rng.gamma(1.5, 600.0, (46, 91)) @ interp_matrix(NLON, 91, True).T
        self.height_m = self.land * oro

        # annual-mean climatology
        clim = 248 + 52 * np.cos(phi) ** 2 - 14 * np.clip(-np.sin(phi), 0, None) ** 4
        clim = clim + 2.5 * np.cos(lam - 2.0) * np.cos(phi) ** 2  # warm pool / cold tongue
        self.base = clim - 0.0065 * self.height_m
        # seasonal amplitude: larger at high latitudes and over land; sign flips between hemispheres
        self.season_amp = (1.5 + 14 * np.abs(np.sin(phi)) ** 1.3 * (1 + 1.2 * self.land)) * np.sign(np.sin(phi))
        # weather: amplitude grows polewards and over land
        self.weather_amp = (1.0 + 4.5 * np.abs(np.sin(phi))) * (1 + 0.5 * self.land)

        self.coarse_shape = (31, 61)  # ~6 degree "synoptic" scale
        self.up_lat = interp_matrix(NLAT, self.coarse_shape[0], False)
        self.up_lon = interp_matrix(NLON, self.coarse_shape[1], True).T
        self.persistence = 0.75
        self.anomaly = self.rng.standard_normal(self.coarse_shape)

    def day(self, day_of_year: int) -> np.ndarray:
        # coldest around mid-January in the north, warmest around mid-July
        season = -np.cos(2 * np.pi * (day_of_year - 15) / DAYS_PER_YEAR)
        p = self.persistence
        self.anomaly = p * self.anomaly + np.sqrt(1 - p * p) * self.rng.standard_normal(self.coarse_shape)
        weather = self.up_lat @ self.anomaly @ self.up_lon
        field = (self.base + self.season_amp * season + self.weather_amp * weather
                 + self.rng.normal(0.0, 0.25, (NLAT, NLON)))
        return field.astype(np.float32)


def write_year(path: str, year: int, climate: Climate) -> None:
    tmp = path + ".part"
    if os.path.exists(tmp):
        os.remove(tmp)
    with netCDF4.Dataset(tmp, "w", format="NETCDF4") as ds:
        ds.createDimension("time", None)
        ds.createDimension("lat", NLAT)
        ds.createDimension("lon", NLON)
        ds.createDimension("bnds", 2)

        t = ds.createVariable("time", "f8", ("time",), fill_value=False)
        t.setncatts({"bounds": "time_bnds", "units": "days since 2000-01-01 00:00:00", "calendar": "noleap",
                     "axis": "T", "long_name": "time", "standard_name": "time"})
        tb = ds.createVariable("time_bnds", "f8", ("time", "bnds"), fill_value=False)

        la = ds.createVariable("lat", "f8", ("lat",), fill_value=False)
        la.setncatts({"bounds": "lat_bnds", "units": "degrees_north", "axis": "Y",
                      "long_name": "Latitude", "standard_name": "latitude"})
        lab = ds.createVariable("lat_bnds", "f8", ("lat", "bnds"), fill_value=False)
        lo = ds.createVariable("lon", "f8", ("lon",), fill_value=False)
        lo.setncatts({"bounds": "lon_bnds", "units": "degrees_east", "axis": "X",
                      "long_name": "Longitude", "standard_name": "longitude"})
        lob = ds.createVariable("lon_bnds", "f8", ("lon", "bnds"), fill_value=False)
        h = ds.createVariable("height", "f8", (), fill_value=False)
        h.setncatts({"units": "m", "axis": "Z", "positive": "up", "long_name": "height", "standard_name": "height"})

        v = ds.createVariable(VAR, "f4", ("time", "lat", "lon"), zlib=True, complevel=1, shuffle=True,
                              chunksizes=(1, NLAT, NLON), fill_value=FILL)
        v.setncatts({"standard_name": "air_temperature", "long_name": "Near-Surface Air Temperature",
                     "comment": "near-surface (usually, 2 meter) air temperature", "units": "K",
                     "cell_methods": "area: mean time: mean", "cell_measures": "area: areacella",
                     "missing_value": FILL, "coordinates": "height"})

        ds.setncatts({
            "Conventions": "CF-1.7 CMIP-6.2", "title": "cloudify benchmark: synthetic daily near-surface air temperature",
            "institution": "synthetic (cloudify bench/make_data.py)", "source": "deterministic generator, not model output",
            "activity_id": "CMIP", "experiment_id": "historical", "variant_label": "r1i1p1f1", "source_id": "SYN-0p5",
            "table_id": "day", "frequency": "day", "variable_id": VAR, "grid_label": "gn",
            "nominal_resolution": "50 km", "realm": "atmos",
        })

        la[:] = climate.lat
        lab[:] = np.stack([climate.lat - 0.25, climate.lat + 0.25], axis=1)
        lo[:] = climate.lon
        lob[:] = np.stack([climate.lon - 0.25, climate.lon + 0.25], axis=1)
        h.assignValue(2.0)
        days = (year - 2000) * DAYS_PER_YEAR + np.arange(DAYS_PER_YEAR, dtype="f8")
        t[:] = days + 0.5
        tb[:] = np.stack([days, days + 1], axis=1)
        for i in range(DAYS_PER_YEAR):
            v[i, :, :] = climate.day(i)
    os.replace(tmp, path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("outdir")
    ap.add_argument("years", nargs="?", type=int, default=2, help="number of yearly files (default 2)")
    ap.add_argument("--start-year", type=int, default=2000)
    ap.add_argument("--force", action="store_true", help="rewrite files that already exist")
    a = ap.parse_args()
    if a.years < 1:
        ap.error("YEARS must be >= 1")
    os.makedirs(a.outdir, exist_ok=True)
    climate = Climate()
    for k in range(a.years):
        year = a.start_year + k
        path = os.path.join(a.outdir, file_name(year))
        if os.path.exists(path) and not a.force:
            # keep the weather sequence identical to a fresh run
            for i in range(DAYS_PER_YEAR):
                climate.day(i)
            print(f"exists  {path}", flush=True)
            continue
        write_year(path, year, climate)
        print(f"wrote   {path} ({os.path.getsize(path) / 1e6:.1f} MB)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
