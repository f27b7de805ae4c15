# The two commands of the README. Each one sets up what it needs on a fresh machine.
.PHONY: app test

app:  ## start the web app on http://127.0.0.1:7860 (the shipped pocket model, else the offline tiny preset; ARGS="--weights PATH" for others)
	bash scripts/setup.sh
	.venv/bin/ibllm app $(ARGS)

test:  ## run the whole test suite (CPU, offline; installs Chromium for the browser test)
	bash scripts/setup.sh --browser
	.venv/bin/python -m pytest $(ARGS)
