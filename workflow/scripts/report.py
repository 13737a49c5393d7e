from nnbridge.core.runlog import logged
from nnbridge.report.render import build_report

with logged(snakemake.log[0]):
    build_report(
        snakemake.params.entries,
        md_path=snakemake.output.md,
        html_path=snakemake.output.html,
        charts_dir=snakemake.output.charts,
        summary_path=snakemake.output.json,
        realistic_path=snakemake.params.realistic,
        dag_failures=snakemake.params.dag_failures,
        run_stages=snakemake.params.run_stages,
        workdir=".",  # Snakemake's job records: the pipeline's own time per stage
    )
