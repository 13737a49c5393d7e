rule report:
    input:
        get_report_inputs,
    output:
        md=f"{RESULTS}/report.md",
        html=report(
            f"{RESULTS}/report.html",
            category="Report",
            labels={"file": "report"},
        ),
        charts=report(
            directory(f"{RESULTS}/report/charts"),
            patterns=["{chart}.png"],
            category="Report",
            labels={"chart": "{chart}"},
        ),
        json=f"{RESULTS}/report/summary.json",
    params:
        **named(
            entries=get_report_entries(),
            realistic=REALISTIC,
            dag_failures=DAG_FAILURES,
            run_stages=get_run_stages(),
            code=code_version("report"),
        ),
    log:
        "logs/report.log",
    localrule: True
    conda:
        "../../envs/report.yaml"
    script:
        "../scripts/report.py"


# One failing model, fold or stage must not hide the others' results: see README "When things go wrong".
onstart:
    # inputs missing before the run (DAG_FAILURES, common.smk): without --keep-going nothing starts
    if DAG_FAILURES and not workflow.execution_settings.keep_going:
        raise WorkflowError(
            f"{DAG_FAILURES[0]['cause']} ({len(DAG_FAILURES)} model(s)/fold(s) with missing inputs; fix them, or "
            "run with --keep-going to run the others and report these as failed)"
        )


onsuccess:
    if DAG_FAILURES:  # every job ran, but models or folds were left out: the run did not do all it was asked
        raise WorkflowError(
            f"nnbridge: {len(DAG_FAILURES)} model(s)/fold(s) left out for missing inputs "
            f"(listed in {RESULTS}/report.md): " + "; ".join(f["cause"] for f in DAG_FAILURES)
        )


onerror:
    # a job failed: with the report among the targets, write it anyway from the records that exist,
    # each failed stage a row with its cause and log, beside the report (report_incomplete.html/.md:
    # snakemake would take a report.md written outside its job for done); snakemake exits non-zero
    if any(job.rule.name == "report" for job in workflow.dag.jobs):
        from nnbridge.report.partial import write_partial_report  # only after a failure: the report's imports

        write_partial_report(
            get_report_entries(), md_path=rules.report.output.md, html_path=rules.report.output.html,
            charts_dir=rules.report.output.charts, summary_path=rules.report.output.json,
            realistic_path=REALISTIC, dag_failures=DAG_FAILURES, run_stages=get_run_stages(),
            # records of jobs that had to run and did not finish are outdated, failure records
            # older than this run are not this run's
            unfinished={str(f) for job in workflow.dag.needrun_jobs() for f in job.output},
            since=RUN_STARTED,
        )
