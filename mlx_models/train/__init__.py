"""Training: the config (defaults < config.yaml < command line), data and corpora, the tasks' losses,
the compiled step, the loop and its run directory, evaluation, and the TF-IDF baseline."""
