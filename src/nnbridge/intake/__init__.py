"""Models and data as they are shared: nnU-Net model zips (``nnUNetv2_export_model_to_zip``),
unpacked file by file into the results cache keyed by the zip's sha256, and folders of images in
nnU-Net's naming, preprocessed by the plans' own preprocessor into the cache.

The listing of a zip and of an image folder needs neither torch nor nnunetv2 (the workflow reads
them when it builds the DAG); preprocessing imports nnunetv2 when it runs.
"""
