"""Errors a user can fix. The command line prints them as one line and exits 2."""


class TrainlabError(Exception):
    """Bad input: a config, a file, a run directory. The message says what and what to do."""


class ConfigError(TrainlabError):
    pass


class DataError(TrainlabError):
    pass


class CheckpointError(TrainlabError):
    pass


class NonFiniteOutput(TrainlabError):
    """The model's outputs are NaN or infinite (its weights diverged): there is nothing to sample from."""
