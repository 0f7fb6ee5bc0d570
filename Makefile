bundle:
	scripts/build_bundle.sh

test:
	python3 -m pytest

.PHONY: bundle test
