"""The user paths of the forecaster: kronos-btc-forecast over a tiny tokenizer, shrunk (tests/user_paths.py)."""

from user_paths import UserPaths


class TestSeriesForecastPaths(UserPaths):
    recipe = "series_forecast"
