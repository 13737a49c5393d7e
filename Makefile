# The two commands of the README. Each sets up .venv (idempotent) first.
.PHONY: demo test venv

venv:
	./scripts/setup-venv.sh

demo: venv
	.venv/bin/snakemake --profile profiles/default

test: venv
	.venv/bin/python -m pytest -ra
