import math

import pytest

from harness.analysis.stats import mean_interval, t_quantile


@pytest.mark.parametrize(
    "df,q975,q995",
    [
        (1, 12.7062, 63.6567),
        (2, 4.3027, 9.9248),
        (4, 2.7764, 4.6041),
        (10, 2.2281, 3.1693),
        (30, 2.0423, 2.7500),
    ],
)
def test_t_quantiles_match_the_tables(df, q975, q995):
    assert t_quantile(0.975, df) == pytest.approx(q975, abs=1e-4)
    assert t_quantile(0.995, df) == pytest.approx(q995, abs=1e-4)
    assert t_quantile(0.025, df) == pytest.approx(-q975, abs=1e-4)


def test_large_df_tends_to_the_normal_quantile():
    assert t_quantile(0.975, 1e6) == pytest.approx(1.959964, abs=1e-5)


def test_mean_interval_over_seeds():
    interval = mean_interval([0.91, 0.94, 0.93])
    sd = math.sqrt(((0.91 - 0.9266667) ** 2 + (0.94 - 0.9266667) ** 2 + (0.93 - 0.9266667) ** 2) / 2)
    assert interval.mean == pytest.approx(0.9266667)
    assert interval.half_width == pytest.approx(4.3027 * sd / math.sqrt(3), rel=1e-4)
    assert interval.low < interval.mean < interval.high and interval.n == 3


def test_one_value_has_no_interval_and_nan_is_dropped():
    single = mean_interval([0.5, float("nan")])
    assert single.mean == 0.5 and math.isnan(single.half_width) and single.n == 1
    assert math.isnan(mean_interval([]).mean)
