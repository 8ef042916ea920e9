"""What a job leaves behind: artifacts, model card, plots, samples and experiment-tracker logs."""
