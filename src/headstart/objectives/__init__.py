"""Self-supervised pretraining objectives, one module each."""
