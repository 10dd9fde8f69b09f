"""The user paths of a mixture-of-experts causal LM: shakespeare-bpe with 4 experts (tests/user_paths.py)."""

from user_paths import UserPaths


class TestMoEPaths(UserPaths):
    recipe = "moe"
