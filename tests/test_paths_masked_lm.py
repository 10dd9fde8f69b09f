"""The user paths of a masked LM: micro-bert, shrunk (tests/user_paths.py)."""

from user_paths import UserPaths


class TestMaskedLMPaths(UserPaths):
    recipe = "masked_lm"
