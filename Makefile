# The two commands of the README. Each sets up .venv (idempotent) first.
.PHONY: demo test test-no-vnni venv emulator bench bench-pipeline

venv:
	./scripts/setup-venv.sh

demo: venv
	.venv/bin/snakemake --profile profiles/default

# qemu-user for the tests on an emulated AVX2-only CPU (installed where apt-get runs as root)
emulator:
	./scripts/setup-emulator.sh

# two pytest-xdist workers (measured on 2 cores: 11.5-13 min for 488 tests); tests/conftest.py
# hands out a module at a time, longest first (AMD EPYC Zen 4, 2026-12-02)
test: venv emulator
	.venv/bin/python -m pytest -n 2 -ra

# the suite as a CPU without VNNI/AMX-INT8 decides (7-bit weights, the u8 fallback, NNCF's overflow
# fix on every layer), on any CPU: what `make test` runs on an AVX2-only machine, with this CPU's
# arithmetic. Run it before landing changes to CPU-decided code on a VNNI/AMX machine
test-no-vnni: venv emulator
	NNBRIDGE_NO_VNNI=1 .venv/bin/python -m pytest -n 2 -ra

# speed at a realistic nnU-Net size (128^3, random weights): not part of `make demo`
bench: venv
	.venv/bin/snakemake --profile profiles/default realistic_benchmark

# the pipeline's own cost on a real-size 5-fold nnU-Net model (made without training; see
# config/realsize.yaml): results/realsize/report.html names the time of every stage
bench-pipeline: venv
	.venv/bin/snakemake --profile profiles/default --configfile config/realsize.yaml
