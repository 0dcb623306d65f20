"""The contract between the finetune-operator and its trainer image (pydantic and the standard library only).

- `spec`: the training part of a FineTuneJob spec (the API's and the trainer config's common fields);
- `hyperparameters`: the automatic hyperparameters, resolved from the data when the spec leaves them unset;
- `config`: `TrainerConfig`, the one JSON document the operator renders for the trainer;
- `outcomes`: exit codes, failure reasons and the typed summaries a trainer run leaves behind;
- `metrics`: the names the trainer serves on /metrics;
- `uris`: the URI patterns and parsers (s3://, pvc://, hf://);
- `wire`: how models look on the wire, and the CRD markers (`Cel`, `Crd`) the generator reads.
"""
