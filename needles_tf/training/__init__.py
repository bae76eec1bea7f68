"""Training: fit loop, schedules, strategy / precision set-up, callbacks, checkpoints."""
