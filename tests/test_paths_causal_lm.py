"""The user paths of a causal LM: the demo preset shakespeare-char, shrunk (recipes in tests/user_paths.py).
Also the rule that keeps the matrix whole: every registered task and preset has a recipe and a file."""

from user_paths import UserPaths, check_registry_coverage


def test_every_task_and_preset_has_a_user_path():
    check_registry_coverage()


class TestCausalLMPaths(UserPaths):
    recipe = "causal_lm"
