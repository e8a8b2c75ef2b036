"""Training on partially labelled multi-modality datasets: ingestion, sampling, losses, trainer."""
