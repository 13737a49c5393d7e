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
        entries=get_report_entries(),
        realistic=get_realistic(),
        code=code_version("report"),
    log:
        "logs/report.log",
    localrule: True
    conda:
        "../../envs/report.yaml"
    script:
        "../scripts/report.py"
