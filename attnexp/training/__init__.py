"""Training: the LightningModule, its metrics, optimisers, callbacks, loggers and resume."""
