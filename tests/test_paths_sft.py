"""The user paths of instruction fine-tuning: shakespeare-sft from a shakespeare-bpe run (tests/user_paths.py)."""

from user_paths import UserPaths


class TestSFTPaths(UserPaths):
    recipe = "sft"
