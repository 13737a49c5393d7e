"""One report across all models and folds, from the records the stages wrote: collect (read the
records) → cards and tables (compute everything shown) → plots (one model per chart) → render
(Markdown and self-contained HTML from Jinja2 templates). :func:`nnbridge.report.render.build_report`
is the stage's one call."""
