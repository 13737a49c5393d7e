# nnbridge: trained nnU-Net checkpoints -> export -> simplify -> quantize -> parity -> benchmark -> report
from snakemake.utils import min_version

min_version("9.0")

# snakemake's own message for a YAML syntax error names no line: check the file first
import os
from snakemake.exceptions import WorkflowError
from nnbridge.core.config import check_yaml
from nnbridge.core.errors import NNBridgeError

if os.path.exists("config/config.yaml"):
    try:
        check_yaml("config/config.yaml")
    except NNBridgeError as error:
        raise WorkflowError(str(error)) from None


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/intake.smk"
include: "workflow/rules/export.smk"
include: "workflow/rules/patches.smk"
include: "workflow/rules/simplify.smk"
include: "workflow/rules/quantize.smk"
include: "workflow/rules/validate.smk"
include: "workflow/rules/benchmark.smk"
include: "workflow/rules/bundle.smk"
include: "workflow/rules/case_parity.smk"
include: "workflow/rules/realistic.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        get_final_outputs(),
    default_target: True
