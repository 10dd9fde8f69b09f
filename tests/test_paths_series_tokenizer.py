"""The user paths of the series tokenizer: kronos-btc, shrunk (tests/user_paths.py)."""

from user_paths import UserPaths


class TestSeriesTokenizerPaths(UserPaths):
    recipe = "series_tokenizer"
