"""climgrad.data.afgl: AFGL reference atmospheres as SI background profiles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from climgrad.data import ObservationError
from climgrad.data.afgl import read_afgl

AFGL = Path(__file__).resolve().parents[2] / "data/single_column/afgl_standard_atmospheres"


def test_tropical_profile_in_si_units() -> None:
    tropical = read_afgl(AFGL / "tropical.dat")
    assert tropical.pressure[0] < tropical.pressure[-1]  # top first
    assert tropical.pressure[-1] == pytest.approx(101300.0)
    assert tropical.temperature[-1] == pytest.approx(299.7)
    # 25930 ppmv of water at the surface: r = w M_w / M_a, q = r / (1 + r)
    r = 25930e-6 * 18.015 / 28.964
    assert tropical.specific_humidity[-1] == pytest.approx(r / (1 + r))
    assert tropical.ozone_mass_mixing_ratio.max() == pytest.approx(
        9.85e-6 * 47.998 / 28.964, rel=1e-6
    )
    assert tropical.mole_fractions == pytest.approx(
        {"carbon_dioxide": 330e-6, "nitrous_oxide": 0.32e-6, "methane": 1.7e-6, "oxygen": 0.209}
    )


def test_log_pressure_interpolation_and_ends() -> None:
    tropical = read_afgl(AFGL / "tropical.dat")
    on_levels = tropical.on_pressure(torch.tensor(tropical.pressure[[10, 20]], dtype=torch.float64))
    np.testing.assert_allclose(on_levels["temperature"].numpy(), tropical.temperature[[10, 20]])
    between = float(np.sqrt(tropical.pressure[-1] * tropical.pressure[-2]))  # midpoint in ln p
    value = tropical.on_pressure(torch.tensor([between, 0.0, 2e5], dtype=torch.float64))
    assert float(value["temperature"][0]) == pytest.approx(
        0.5 * (tropical.temperature[-1] + tropical.temperature[-2])
    )
    assert float(value["temperature"][1]) == pytest.approx(tropical.temperature[0])  # model top
    assert float(value["temperature"][2]) == pytest.approx(tropical.temperature[-1])  # below


def test_every_shipped_table_reads() -> None:
    for path in sorted(AFGL.glob("*.dat")):
        atmosphere = read_afgl(path)
        assert 150 < atmosphere.temperature.min() < atmosphere.temperature.max() < 400


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "no such file"),
        ("1 2 3\n4 5 6\n", "11 columns"),
        ("not numbers at all\n", "numeric"),
    ],
)
def test_bad_files_give_one_line_errors(tmp_path: Path, content: str | None, match: str) -> None:
    path = tmp_path / "atmosphere.dat"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ObservationError, match=match) as error:
        read_afgl(path)
    assert "\n" not in str(error.value) and "afgl_standard_atmospheres" in str(error.value)
