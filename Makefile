# The two commands of the README. Each sets up .venv (idempotent) first.
.PHONY: demo test venv bench bench-pipeline

venv:
	./scripts/setup-venv.sh

demo: venv
	.venv/bin/snakemake --profile profiles/default

# one process: on 2 cores two pytest-xdist workers were slower (24.5 vs ~21 min; the pipeline's
# jobs use both cores already). On more cores `pytest -n N` hands out a module at a time
# (tests/conftest.py), the demo pipeline's two modules together, longest first.
test: venv
	.venv/bin/python -m pytest -ra

# speed at a realistic nnU-Net size (128^3, random weights): not part of `make demo`
bench: venv
	.venv/bin/snakemake --profile profiles/default realistic_benchmark

# the pipeline's own cost on a real-size 5-fold nnU-Net model (made without training; see
# config/realsize.yaml): results/realsize/report.html names the time of every stage
bench-pipeline: venv
	.venv/bin/snakemake --profile profiles/default --configfile config/realsize.yaml
