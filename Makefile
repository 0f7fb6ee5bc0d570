# make bundle [PYTHONS="3.11 3.12"] [BUNDLE_FLAGS=--all-compiled]
PYTHONS ?= 3.10 3.11 3.12 3.13
bundle:
	scripts/build_bundle.sh --pythons "$(PYTHONS)" $(BUNDLE_FLAGS)

compiled:
	TLSMIRROR_COMPILE=1 python3 -m pip install -e .

clean:
	find src -name "*.so" -delete; rm -rf build

test:
	python3 -m pytest

.PHONY: bundle compiled clean test
