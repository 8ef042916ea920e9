"""The worker's data room: read the uploaded rows, prepare them (clean, split, augment, balance), tokenize them.

read.py (rows with their line, the shared row rules) -> prepare.py (the pipeline over clean.py, split.py,
augment.py, paraphrase.py; its first half is saved by the job's validation for the training run) ->
examples.py (tokenized datasets). inputs.py: what a job starts from (model folder, hyperparameters, files).
"""
