from nnbridge.report.build import build_report
from nnbridge.core.runlog import logged

with logged(snakemake.log[0]):
    build_report(
        snakemake.params.entries,
        md_path=snakemake.output.md,
        html_path=snakemake.output.html,
        plot_path=snakemake.output.plot,
        summary_path=snakemake.output.json,
        realistic_path=snakemake.params.realistic,
        dag_failures=snakemake.params.dag_failures,
        run_stages=snakemake.params.run_stages,
    )
