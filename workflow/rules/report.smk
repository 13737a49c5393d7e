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
        plot=report(
            f"{RESULTS}/report/latency.png",
            category="Report",
            labels={"file": "latency plot"},
        ),
        json=f"{RESULTS}/report/summary.json",
    params:
        entries=get_report_entries(),
        realistic=REALISTIC,
        code=code_version("report"),
    log:
        "logs/report.log",
    localrule: True
    conda:
        "../../envs/report.yaml"
    script:
        "../scripts/report.py"
