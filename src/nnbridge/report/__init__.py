"""One report across all models and folds, from the records the stages wrote."""
