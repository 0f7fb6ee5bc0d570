bundle:
	scripts/build_bundle.sh

compiled:
	TLSMIRROR_COMPILE=1 python3 -m pip install -e .

clean:
	find src -name "*.so" -delete; rm -rf build

test:
	python3 -m pytest

.PHONY: bundle compiled clean test
