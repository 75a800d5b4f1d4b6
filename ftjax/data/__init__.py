"""Data: raw files -> TFDS splits -> tokenised features -> batches.

raw.py            readers of datasets as distributed (GLUE TSVs, CoNLL-2003, E2E, SQuAD, text, any table)
tfds_builders.py  load_split(): those readers as a TFDS builder (array_record, no TensorFlow), or TFDS's own
features.py       example dicts + tokenizer -> padded numpy features, per task kind; QA/NER decoding
pipeline.py       deterministic, resumable, sharded, length-bucketed batches (the batch contract)
"""
