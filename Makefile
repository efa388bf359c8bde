# make demo: set up .venv (and system Qt libraries when root) and run the demo
# make test: set up .venv and run the whole test suite (GUI tests under Xvfb, slow ones too)
# make test-quick: the same without the tests marked slow
.PHONY: setup demo demo-gui test test-quick bench clean

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/napari-mitosis demo --out results

demo-gui: setup
	.venv/bin/napari-mitosis demo --out results --gui

test: setup
	.venv/bin/python -m pytest

test-quick: setup
	.venv/bin/python -m pytest -m "not slow"

bench: setup
	.venv/bin/python benchmarks/make_slides.py
	.venv/bin/python benchmarks/bench_slide_open.py

clean:
	rm -rf results .pytest_cache
